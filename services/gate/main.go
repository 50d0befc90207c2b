// tuneforge-gate: an overload gate in front of one tuneforge service.
//
// A Python gRPC server accepts every call on one polling thread that needs the GIL. Past its
// capacity the handlers hold the GIL, calls wait in gRPC core's queue before Python can see them,
// and no admission inside the process can refuse them: clients time out. The gate is a
// transparent gRPC proxy (bytes in, bytes out: it never decodes a message) that keeps at most
// -max-active unary calls in flight to its backend. A unary call that cannot start within
// -queue-target of its arrival is answered RESOURCE_EXHAUSTED (google.rpc.ErrorInfo reason
// OVERLOADED, and a RetryInfo), in well under any deadline, while what is admitted keeps its
// latency. Health checks and streaming calls are never queued: the backend caps its streams.
// The one message it decodes is a health check's request: the check of service "tuneforge.gate"
// (the liveness probe's) it answers itself; every other check goes to the backend.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/encoding/gzip" // clients may compress; each leg negotiates its own encoding
)

func main() {
	listen := flag.String("listen", "127.0.0.1:50050", "address the gate serves clients on")
	backend := flag.String("backend", "", "address of the tuneforge service behind the gate (host:port)")
	maxActive := flag.Int("max-active", 16, "unary calls in flight to the backend at once")
	queueTarget := flag.Duration("queue-target", 100*time.Millisecond,
		"while the backend is past capacity, how long after its arrival a unary call may wait for a slot "+
			"before it is answered RESOURCE_EXHAUSTED")
	burst := flag.Duration("burst-wait", 500*time.Millisecond,
		"while calls still find free slots, how long one may wait for a slot (absorbs bursts and short stalls)")
	interval := flag.Duration("interval", time.Second,
		"no call finding a free slot for this long means the backend is past capacity: shedding starts")
	streaming := flag.String("streaming", "",
		"comma-separated full method names (/pkg.Service/Method) that stream: never queued, passed straight through")
	metrics := flag.String("metrics", "", "address to serve Prometheus /metrics on (empty: none)")
	conns := flag.Int("backend-conns", 4, "HTTP/2 connections to the backend (calls are spread over them)")
	maxMessage := flag.Int("max-message-bytes", 64<<20, "largest message passed in either direction")
	shutdownDelay := flag.Duration("shutdown-delay", 0,
		"after SIGTERM, keep serving this long before draining (a pod's endpoints are removed meanwhile)")
	drainTimeout := flag.Duration("drain-timeout", 30*time.Second,
		"after it stops taking calls, how long calls in flight may still finish before they are cut")
	watchStdin := flag.Bool("exit-on-stdin-eof", false,
		"stop when standard input closes (a launcher holding the pipe has gone)")
	flag.Parse()
	var problems []string
	if *backend == "" {
		problems = append(problems, "-backend is required (host:port of the service)")
	}
	if *maxActive < 1 || *conns < 1 || *maxMessage < 1 {
		problems = append(problems, "-max-active, -backend-conns and -max-message-bytes must be >= 1")
	}
	if *queueTarget <= 0 || *burst <= 0 || *interval <= 0 {
		problems = append(problems, "-queue-target, -burst-wait and -interval must be > 0 (e.g. 100ms)")
	}
	if *shutdownDelay < 0 || *drainTimeout < 0 {
		problems = append(problems, "-shutdown-delay and -drain-timeout must be >= 0 (e.g. 5s)")
	}
	streams := map[string]bool{}
	for _, m := range strings.Split(*streaming, ",") {
		if m = strings.TrimSpace(m); m == "" {
			continue
		}
		if parts := strings.Split(m, "/"); len(parts) != 3 || parts[0] != "" || parts[1] == "" || parts[2] == "" {
			problems = append(problems, fmt.Sprintf("-streaming %q: each method must be /package.Service/Method", m))
		}
		streams[m] = true
	}
	if len(problems) > 0 {
		fmt.Fprintln(os.Stderr, "tuneforge-gate: "+strings.Join(problems, "; "))
		os.Exit(2)
	}

	pool := make([]*grpc.ClientConn, *conns)
	for i := range pool {
		cc, err := grpc.NewClient(*backend,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			// The backend is in the same pod or host: while it starts (or restarts) reconnect within
			// a second, not after grpc-go's default backoff of up to two minutes.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
				MinConnectTimeout: 5 * time.Second,
			}),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(*maxMessage), grpc.MaxCallSendMsgSize(*maxMessage)))
		if err != nil {
			log.Fatalf("tuneforge-gate: backend %s: %v", *backend, err)
		}
		pool[i] = cc
	}
	stats := newStats()
	g := &gate{
		pool:      pool,
		admission: newAdmission(*maxActive, *queueTarget, *burst, *interval),
		streaming: streams,
		stats:     stats,
	}

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("tuneforge-gate: cannot listen on %s: %v", *listen, err)
	}
	srv := grpc.NewServer(
		grpc.ForceServerCodec(rawCodec{}),
		grpc.UnknownServiceHandler(g.handle),
		grpc.MaxRecvMsgSize(*maxMessage), grpc.MaxSendMsgSize(*maxMessage))

	var httpSrv *http.Server
	if *metrics != "" {
		mlis, err := net.Listen("tcp", *metrics)
		if err != nil {
			log.Fatalf("tuneforge-gate: cannot serve metrics on %s: %v", *metrics, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/metrics", stats.serve(g.admission))
		httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = httpSrv.Serve(mlis) }()
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	if *watchStdin {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop <- syscall.SIGTERM
		}()
	}
	go func() {
		sig := <-stop
		if *shutdownDelay > 0 && sig == syscall.SIGTERM {
			log.Printf("tuneforge-gate: SIGTERM: serving %s more, then draining", *shutdownDelay)
			// Clients still routed here (endpoint removal lags SIGTERM) keep being served; a second
			// signal ends the wait.
			select {
			case <-time.After(*shutdownDelay):
			case <-stop:
			}
		}
		// Stop taking calls; let the ones in flight finish (the backend has its own grace).
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(*drainTimeout):
			srv.Stop()
		}
		if httpSrv != nil {
			_ = httpSrv.Shutdown(context.Background())
		}
	}()
	// One line the launcher waits for: the bound address (the port may have been 0).
	fmt.Printf("tuneforge-gate serving %s -> %s (max-active %d, queue-target %s, burst-wait %s, interval %s, "+
		"%d streaming methods)\n", lis.Addr(), *backend, *maxActive, *queueTarget, *burst, *interval, len(streams))
	if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		log.Fatalf("tuneforge-gate: %v", err)
	}
	for _, cc := range pool {
		_ = cc.Close()
	}
}
