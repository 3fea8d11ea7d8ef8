package gradserve

// Against live servers that tests/test_go_client.py starts: the conformance server
// (plaintext, bearer token), a TLS server and a mutual-TLS server with a token.

import (
	"context"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/gradserve/gradserve/client/go/gradservev1"
)

func env(t *testing.T, name string) string {
	value := os.Getenv(name)
	if value == "" {
		t.Skipf("%s is not set: run through tests/test_go_client.py", name)
	}
	return value
}

// neuron is the notebook's o = tanh(x1*w1 + x2*w2 + b).
func neuron() (g *Graph, x1, x2, w1, w2, b, n, o Node) {
	g = NewGraph()
	x1, x2 = g.Leaf(2).Label("x1"), g.Leaf(0).Label("x2")
	w1, w2 = g.Leaf(-3).Label("w1"), g.Leaf(1).Label("w2")
	b = g.Leaf(6.8813735870195432).Label("b")
	n = x1.Mul(w1).Add(x2.Mul(w2)).Add(b).Label("n")
	o = n.Tanh().Label("o")
	return
}

func near(t *testing.T, what string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 1e-12*(1+math.Abs(want)) {
		t.Errorf("%s = %v, expected %v", what, got, want)
	}
}

func TestBackwardFillsValuesAndGradients(t *testing.T) {
	target, token := conformanceServer(t)
	c := dial(t, target, WithToken(token), WithTimeout(time.Minute))
	_, x1, x2, w1, w2, b, n, o := neuron()
	if err := c.Backward(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	// Closed forms: do/dn = 1 - tanh(n)^2, and n is linear in each leaf.
	nv := 2*-3 + 0*1 + 6.8813735870195432
	dn := 1 - math.Tanh(nv)*math.Tanh(nv)
	near(t, "o", o.Value(), math.Tanh(nv))
	near(t, "n", n.Value(), nv)
	near(t, "do/dx1", x1.Grad(), -3*dn)
	near(t, "do/dw1", w1.Grad(), 2*dn)
	near(t, "do/dx2", x2.Grad(), 1*dn)
	near(t, "do/dw2", w2.Grad(), 0)
	near(t, "do/db", b.Grad(), dn)
	near(t, "do/do", o.Grad(), 1)
}

func TestTheStructureIsSentOnceAndResentWhenTheServerLacksIt(t *testing.T) {
	target, token := conformanceServer(t)
	c := dial(t, target, WithToken(token))
	ctx := context.Background()
	g, x1, _, _, _, _, _, o := neuron()
	first, err := c.Evaluate(ctx, g, nil)
	if err != nil {
		t.Fatal(err)
	}
	digest := g.PlanDigest()
	if len(digest) != 16 || string(digest) != string(first.PlanDigest) {
		t.Fatalf("the graph keeps the reply's 16-byte digest, got %x", digest)
	}
	g.SetLeaf(x1, 1) // a new value keeps the structure...
	if g.PlanDigest() == nil {
		t.Fatal("a leaf value change dropped the digest")
	}
	second, err := c.Evaluate(ctx, g, &Request{Nodes: []Node{o}})
	if err != nil {
		t.Fatal(err)
	}
	near(t, "o at x1 = 1", second.Values[0], math.Tanh(1*-3+6.8813735870195432))

	// Another server process never compiled this structure: it answers the digest with
	// NOT_FOUND, and the client sends the whole graph instead.
	other := dial(t, env(t, "GRADSERVE_MTLS_TARGET"), WithTLS(env(t, "GRADSERVE_TLS_CA")),
		WithClientCertificate(env(t, "GRADSERVE_CLIENT_CERT"), env(t, "GRADSERVE_CLIENT_KEY")),
		WithToken(env(t, "GRADSERVE_MTLS_TOKEN")))
	assertLacks(t, other, g)
	third, err := other.Evaluate(ctx, g, &Request{Nodes: []Node{o}})
	if err != nil {
		t.Fatal(err)
	}
	near(t, "o on the other server", third.Values[0], second.Values[0])

	// Stream does the same: the conformance server holds this digest now, the TLS one not.
	tls := dial(t, env(t, "GRADSERVE_TLS_TARGET"), WithTLS(env(t, "GRADSERVE_TLS_CA")))
	assertLacks(t, tls, g)
	var streamed []float64
	err = tls.Stream(ctx, g, &Request{Nodes: []Node{o}}, func(chunk *Chunk) error {
		streamed = append(streamed, chunk.Values...)
		return nil
	})
	if err != nil || len(streamed) != 1 {
		t.Fatalf("Stream after NOT_FOUND: %v, %v", err, streamed)
	}
	near(t, "o streamed from a third server", streamed[0], second.Values[0])

	o.Label("output") // ...a label is structure: the next call sends the graph
	if g.PlanDigest() != nil {
		t.Fatal("a label change kept the digest")
	}
}

// assertLacks checks that the server behind c answers g's digest with NOT_FOUND, so that a
// call that then succeeds must have sent the whole graph again.
func assertLacks(t *testing.T, c *Client, g *Graph) {
	t.Helper()
	request := &pb.EvaluateRequest{Graph: &pb.Graph{LeafValues: g.leafValues}, PlanDigest: g.PlanDigest()}
	if _, err := c.Stub().Evaluate(context.Background(), request); status.Code(err) != codes.NotFound {
		t.Fatalf("the server should not hold the plan yet: %v", err)
	}
}

func TestTLSTrustsTheGivenCA(t *testing.T) {
	c := dial(t, env(t, "GRADSERVE_TLS_TARGET"), WithTLS(env(t, "GRADSERVE_TLS_CA")))
	ops, err := c.ListOps(context.Background())
	if err != nil || len(ops) == 0 {
		t.Fatalf("ListOps over TLS: %v, %d ops", err, len(ops))
	}
	plain := dial(t, env(t, "GRADSERVE_TLS_TARGET"))
	_, err = plain.ListOps(context.Background())
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("plaintext to a TLS server: %v", err)
	}
}

func TestMutualTLSNeedsTheClientCertificateAndTheToken(t *testing.T) {
	target, ca := env(t, "GRADSERVE_MTLS_TARGET"), env(t, "GRADSERVE_TLS_CA")
	cert := WithClientCertificate(env(t, "GRADSERVE_CLIENT_CERT"), env(t, "GRADSERVE_CLIENT_KEY"))
	token := WithToken(env(t, "GRADSERVE_MTLS_TOKEN"))
	g, _, _, _, _, _, _, o := neuron()
	ctx := context.Background()
	if err := dial(t, target, WithTLS(ca), cert, token).Backward(ctx, o); err != nil {
		t.Fatal(err)
	}
	near(t, "o", o.Value(), math.Tanh(2*-3+6.8813735870195432))
	if _, err := dial(t, target, WithTLS(ca), cert).Evaluate(ctx, g, nil); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("without the token: %v", err)
	}
	_, err := dial(t, target, WithTLS(ca), token).Evaluate(ctx, g, nil)
	var e *Error
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &e) || !e.Auth {
		t.Fatalf("without a client certificate: %v", err)
	}
	if !strings.Contains(e.Message, "requires a client certificate") {
		t.Errorf("the message does not say what to do: %q", e.Message)
	}
}

func TestErrorsAreTypedAndKeepTheirStatus(t *testing.T) {
	target, token := conformanceServer(t)
	c := dial(t, target, WithToken(token))
	g := NewGraph()
	x := g.Leaf(-1).Label("x")
	x.Log().Label("log(x)")
	_, err := c.Evaluate(context.Background(), g, nil)
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("expected an INVALID_ARGUMENT *Error, got %v", err)
	}
	if e.Node != 1 || e.Field != "graph.leaf_values" || len(e.Violations) != 1 {
		t.Errorf("node %d, field %q, %d violations", e.Node, e.Field, len(e.Violations))
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("status.Code sees %s", status.Code(err))
	}
	if errors.Is(err, ErrNotFound) {
		t.Error("an INVALID_ARGUMENT error is ErrNotFound")
	}
}

func TestTheClientTimeoutAppliesAndAContextDeadlineWins(t *testing.T) {
	target, token := conformanceServer(t)
	g, _, _, _, _, _, _, _ := neuron()
	short := dial(t, target, WithToken(token), WithTimeout(time.Nanosecond))
	_, err := short.Evaluate(context.Background(), g, nil)
	if !errors.Is(err, ErrDeadlineExceeded) {
		t.Fatalf("a 1 ns client timeout: %v", err)
	}
	want := "gradserve: the call took longer than its timeout of 1e-09 s: pass a larger timeout, or send a smaller graph"
	if err.Error() != want {
		t.Errorf("got %q, want %q", err.Error(), want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := short.Evaluate(ctx, g, nil); err != nil {
		t.Fatalf("the context's minute should win over the client's nanosecond: %v", err)
	}
}

func TestAStreamCallbackErrorStopsTheStreamAndIsReturned(t *testing.T) {
	target, token := conformanceServer(t)
	c := dial(t, target, WithToken(token))
	g, _, _, _, _, _, _, _ := neuron()
	stop := errors.New("enough")
	calls := 0
	err := c.Stream(context.Background(), g, &Request{ChunkSize: 2}, func(*Chunk) error {
		calls++
		return stop
	})
	if err != stop || calls != 1 {
		t.Fatalf("got %v after %d chunks", err, calls)
	}
}

func TestLeafTangentsBringJVPsAndHVPs(t *testing.T) {
	target, token := conformanceServer(t)
	c := dial(t, target, WithToken(token))
	g, _, _, _, _, b, _, o := neuron()
	// Along b: do/db = 1 - o^2, and b's gradient moves by d2o/db2 = -2 o (1 - o^2).
	req := &Request{Nodes: []Node{o, b}, LeafTangents: []float64{0, 0, 0, 0, 1}}
	result, err := c.Evaluate(context.Background(), g, req)
	if err != nil {
		t.Fatal(err)
	}
	ov := math.Tanh(2*-3 + 6.8813735870195432)
	near(t, "value tangent of o", result.ValueTangents[0], 1-ov*ov)
	near(t, "gradient tangent of b", result.GradTangents[1], -2*ov*(1-ov*ov))
}
