// smoke: the local cluster's smoke-test image (static, FROM scratch).
//
//	smoke serve [ADDR]      answer "hello from <hostname>" on ADDR (default :8080), log each request
//	smoke get URL [SECONDS] GET URL until it answers 200 (default 60 s), print the body
package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("smoke: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: smoke serve [ADDR] | smoke get URL [SECONDS]")
	}
	switch os.Args[1] {
	case "serve":
		addr := ":8080"
		if len(os.Args) > 2 {
			addr = os.Args[2]
		}
		host, _ := os.Hostname()
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			log.Printf("request %s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
			fmt.Fprintf(w, "hello from %s\n", host)
		})
		log.Printf("serving on %s as uid %d", addr, os.Getuid())
		log.Fatal(http.ListenAndServe(addr, nil))
	case "get":
		if len(os.Args) < 3 {
			log.Fatal("usage: smoke get URL [SECONDS]")
		}
		url, wait := os.Args[2], 60
		if len(os.Args) > 3 {
			wait, _ = strconv.Atoi(os.Args[3])
		}
		client := &http.Client{Timeout: 5 * time.Second}
		deadline := time.Now().Add(time.Duration(wait) * time.Second)
		for {
			resp, err := client.Get(url)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					fmt.Printf("GET %s: %s", url, body)
					return
				}
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
			if time.Now().After(deadline) {
				log.Fatalf("GET %s: %v", url, err)
			}
			log.Printf("GET %s: %v (retrying)", url, err)
			time.Sleep(time.Second)
		}
	default:
		log.Fatalf("unknown command %q", os.Args[1])
	}
}
