package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// frame is one message as bytes: the gate never decodes what it passes on.
type frame struct{ payload []byte }

// rawCodec moves frames without decoding them. It keeps the name "proto" so the content type
// on both legs stays application/grpc(+proto).
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("tuneforge-gate: cannot encode %T", v)
	}
	return f.payload, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("tuneforge-gate: cannot decode into %T", v)
	}
	f.payload = append(f.payload[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

const (
	healthPrefix = "/grpc.health.v1.Health/"
	healthCheck  = healthPrefix + "Check"
	// SelfService is the health-check service name the gate answers itself (SERVING while its
	// server loop runs, draining included): the liveness probe's, which must not depend on the
	// service behind it. Every other health check passes through to the service.
	SelfService = "tuneforge.gate"
)

type gate struct {
	pool      []*grpc.ClientConn
	next      atomic.Uint64
	admission *admission
	streaming map[string]bool
	stats     *stats
}

var bothStreams = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// handle passes one call to the backend: unary calls through admission, health checks and
// streaming calls straight.
func (g *gate) handle(_ any, in grpc.ServerStream) error {
	arrived := time.Now()
	method, ok := grpc.MethodFromServerStream(in)
	if !ok {
		return status.Error(codes.Internal, "tuneforge-gate: no method on the call")
	}
	if !g.streaming[method] && !strings.HasPrefix(method, healthPrefix) {
		waited, admitted := g.admission.enter(in.Context(), arrived)
		g.stats.queued(waited)
		if !admitted {
			if err := in.Context().Err(); err != nil { // the client left (or its deadline passed) while waiting
				st := status.FromContextError(err)
				g.stats.call(method, st.Code().String())
				return st.Err()
			}
			g.stats.call(method, "overloaded")
			return overloaded(method, waited, g.admission.target)
		}
		defer g.admission.leave()
	}
	var first *frame
	if method == healthCheck {
		first = &frame{}
		if err := in.RecvMsg(first); errors.Is(err, io.EOF) {
			first = nil // no request message: the service answers that as it would without the gate
		} else if err != nil {
			st, ok := status.FromError(err) // the client left, its deadline passed, or a limit was hit
			if !ok {
				st = status.FromContextError(err)
			}
			g.stats.call(method, st.Code().String())
			return st.Err()
		}
		req := &healthpb.HealthCheckRequest{}
		if first != nil && proto.Unmarshal(first.payload, req) == nil && req.GetService() == SelfService {
			g.stats.call(method, codes.OK.String())
			return g.serveSelf(in)
		}
	}
	err := g.forward(in, method, first)
	g.stats.call(method, status.Code(err).String())
	return err
}

// serveSelf answers the gate's own health check: the call reached this handler, so the server
// loop is alive.
func (g *gate) serveSelf(in grpc.ServerStream) error {
	payload, err := proto.Marshal(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	return in.SendMsg(&frame{payload: payload})
}

// overloaded is the refusal: RESOURCE_EXHAUSTED with the services' own error shape (ErrorInfo
// reason OVERLOADED, domain tuneforge) and a RetryInfo telling the client when to try again.
func overloaded(method string, waited, target time.Duration) error {
	name := method[strings.LastIndex(method, "/")+1:]
	st := status.New(codes.ResourceExhausted, fmt.Sprintf(
		"this service is overloaded: %s waited %d ms to start, past its queueing target of %d ms "+
			"(tuneforge-gate -queue-target): retry with backoff, or add replicas",
		name, waited.Milliseconds(), target.Milliseconds()))
	detailed, err := st.WithDetails(
		&errdetails.ErrorInfo{Reason: "OVERLOADED", Domain: "tuneforge",
			Metadata: map[string]string{"method": name, "queue_target_ms": fmt.Sprint(target.Milliseconds())}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(target)})
	if err != nil {
		return st.Err()
	}
	return detailed.Err()
}

// pick is the next backend connection that is ready, round robin; when none is (the backend is
// starting, or gone), the next one in turn, whose call then fails fast (UNAVAILABLE) or connects.
// A connection that failed while the backend started waits out its reconnect backoff: calls go to
// the ready ones meanwhile, so one up connection serves everything.
func (g *gate) pick() *grpc.ClientConn {
	n := uint64(len(g.pool))
	start := g.next.Add(1)
	for i := uint64(0); i < n; i++ {
		cc := g.pool[(start+i)%n]
		switch cc.GetState() {
		case connectivity.Ready:
			return cc
		case connectivity.Idle:
			cc.Connect() // so that it is ready for a later call
		}
	}
	return g.pool[start%n]
}

// forward copies the call both ways: the client's metadata, messages and half-close to the
// backend; the backend's headers, messages, trailers and status back. The incoming context
// carries the deadline and the cancellation to the backend. first, when not nil, is the client's
// first message, already read by the gate: it is sent before the rest.
func (g *gate) forward(in grpc.ServerStream, method string, first *frame) error {
	ctx, cancel := context.WithCancel(in.Context())
	defer cancel()
	md, _ := metadata.FromIncomingContext(in.Context())
	ctx = metadata.NewOutgoingContext(ctx, passable(md))
	cc := g.pick()
	out, err := cc.NewStream(ctx, bothStreams, method, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return backendError(err)
	}
	up := make(chan error, 1)
	go func() { up <- toBackend(in, out, first) }()
	down := make(chan result, 1)
	go func() { down <- toClient(out, in) }()
	for {
		select {
		case err := <-up:
			if err == nil {
				up = nil // half-closed: wait for the backend's answer
				continue
			}
			// Reading the client's side failed (it left, or sent what cannot be read): end the
			// backend's call, and touch neither stream again once toClient has returned.
			cancel()
			<-down
			if st, ok := status.FromError(err); ok {
				return st.Err()
			}
			return status.Error(codes.Canceled, "tuneforge-gate: the client's stream failed: "+err.Error())
		case r := <-down:
			if !r.fromBackend { // the client left while the answer was being passed on
				cancel()
				return status.FromContextError(context.Canceled).Err()
			}
			in.SetTrailer(passable(out.Trailer())) // the backend's call has ended: its trailer is complete
			if errors.Is(r.err, io.EOF) {
				return nil
			}
			return backendError(r.err)
		}
	}
}

// result is how toClient ended: the backend's end of the call (io.EOF or its status), or a
// failure to pass something on to the client.
type result struct {
	err         error
	fromBackend bool
}

func toBackend(in grpc.ServerStream, out grpc.ClientStream, first *frame) error {
	if first != nil {
		if err := out.SendMsg(first); err != nil {
			return nil // the backend ended the call: its status comes through toClient
		}
	}
	for {
		f := &frame{}
		if err := in.RecvMsg(f); err != nil {
			if errors.Is(err, io.EOF) {
				return out.CloseSend()
			}
			return err
		}
		if err := out.SendMsg(f); err != nil {
			// The backend ended the call (its status comes through toClient): stop reading.
			return nil
		}
	}
}

func toClient(out grpc.ClientStream, in grpc.ServerStream) result {
	header, err := out.Header()
	if err != nil {
		return result{err, true}
	}
	if len(header) > 0 {
		if err := in.SendHeader(passable(header)); err != nil {
			return result{err, false}
		}
	}
	for {
		f := &frame{}
		if err := out.RecvMsg(f); err != nil {
			return result{err, true} // io.EOF: the backend ended with OK
		}
		if err := in.SendMsg(f); err != nil {
			return result{err, false}
		}
	}
}

// backendError keeps the backend's status (code, message, details) as it was; a backend that
// cannot be reached is UNAVAILABLE.
func backendError(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unavailable, "tuneforge-gate: backend unreachable: "+err.Error())
}

// passable drops what gRPC sets per hop (pseudo-headers, content type, user agent, te, grpc-*:
// encodings, timeouts, status), both ways: each leg of the call negotiates its own.
func passable(md metadata.MD) metadata.MD {
	out := metadata.MD{}
	for k, v := range md {
		if strings.HasPrefix(k, ":") || strings.HasPrefix(k, "grpc-") || k == "content-type" || k == "user-agent" || k == "te" {
			continue
		}
		out[k] = v
	}
	return out
}
