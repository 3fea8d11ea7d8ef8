package gradserve

// The client retries UNAVAILABLE through gRPC's own retry policy (service_config.json),
// up to its maxAttempts, against an in-process server that refuses the first calls.

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/gradserve/gradserve/client/go/gradservev1"
)

type flaky struct {
	pb.UnimplementedGradientServiceServer
	failures, attempts int32
}

func (f *flaky) Evaluate(ctx context.Context, req *pb.EvaluateRequest) (*pb.EvaluateResponse, error) {
	if atomic.AddInt32(&f.attempts, 1) <= f.failures {
		return nil, status.Error(codes.Unavailable, "draining")
	}
	n := uint32(len(req.GetGraph().GetNodeOps()))
	return &pb.EvaluateResponse{NodeIds: []uint32{n - 1}, Values: []float64{1}, Grads: []float64{1}}, nil
}

func startFlaky(t *testing.T, failures int32) (*flaky, string) {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server, servicer := grpc.NewServer(), &flaky{failures: failures}
	pb.RegisterGradientServiceServer(server, servicer)
	go server.Serve(listener)
	t.Cleanup(server.Stop)
	return servicer, listener.Addr().String()
}

func maxAttempts(t *testing.T) int32 {
	var config struct {
		MethodConfig []struct {
			RetryPolicy struct{ MaxAttempts int32 } `json:"retryPolicy"`
		} `json:"methodConfig"`
	}
	if err := json.Unmarshal([]byte(serviceConfig), &config); err != nil {
		t.Fatal(err)
	}
	return config.MethodConfig[0].RetryPolicy.MaxAttempts
}

func evaluateOnce(target string) error {
	client, err := Dial(target)
	if err != nil {
		return err
	}
	defer client.Close()
	g := NewGraph()
	x := g.Leaf(0.5)
	_, err = client.Evaluate(context.Background(), g, &Request{Outputs: []Node{x.Tanh()}})
	return err
}

func TestUnavailableIsRetried(t *testing.T) {
	servicer, target := startFlaky(t, 2)
	if err := evaluateOnce(target); err != nil {
		t.Fatalf("a call refused twice failed: %v", err)
	}
	if got := atomic.LoadInt32(&servicer.attempts); got != 3 {
		t.Fatalf("attempts = %d, want 3", got)
	}
}

func TestRetriesStopAtMaxAttempts(t *testing.T) {
	servicer, target := startFlaky(t, 100)
	if err := evaluateOnce(target); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want UNAVAILABLE", err)
	}
	if got, want := atomic.LoadInt32(&servicer.attempts), maxAttempts(t); got != want {
		t.Fatalf("attempts = %d, want maxAttempts %d", got, want)
	}
}
