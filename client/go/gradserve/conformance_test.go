package gradserve

// The conformance suite (conformance/cases.json) through this client: graphs built with the
// builder, calls made with Evaluate and Stream, errors read as *Error. Graphs given as raw
// columns, and explicit plan digests, go through the generated stub (Client.Stub).

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"net"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/gradserve/gradserve/client/go/gradservev1"
)

type suite struct {
	Tolerance struct{ Absolute, Relative float64 }
	Cases     []struct {
		Name  string
		Graph *struct {
			Nodes []node
			Raw   *rawGraph
			Chain *chain
		}
		Calls []call
	}
}

type node struct {
	Leaf   *float64
	Op     string
	Inputs []int
	Label  string
}

type rawGraph struct {
	OpNames     []string  `json:"op_names"`
	NodeOps     []uint32  `json:"node_ops"`
	InputCounts []uint32  `json:"input_counts"`
	InputIDs    []uint32  `json:"input_ids"`
	LeafValues  []float64 `json:"leaf_values"`
	Labels      []string  `json:"labels"`
}

type callRequest struct {
	Outputs           []int
	Seeds             []float64
	Selection         string
	Nodes             []int
	ChunkSize         int  `json:"chunk_size"`
	AllowNonFinite    bool `json:"allow_non_finite"`
	Rows              [][]float64
	LeafValues        []float64 `json:"leaf_values"`
	Plan              string
	PlanDigest        string `json:"plan_digest"`
	Token             *string
	DeadlineMs        int `json:"deadline_ms"`
	CancelAfterChunks int `json:"cancel_after_chunks"`
	Target            string
}

type chain struct {
	Leaves []node
	Repeat int
	Steps  []node
}

type call struct {
	RPC     string
	Request callRequest
	Expect  struct {
		Status           codes.Code
		NodeIDs          []uint32 `json:"node_ids"`
		Values, Grads    []float64
		Rows             int
		PlanDigestLength int `json:"plan_digest_length"`
		Chunks           int
		TotalNodes       int `json:"total_nodes"`
		Samples          *struct {
			NodeIDs       []uint32 `json:"node_ids"`
			Values, Grads []float64
		}
		ValueSum        *float64 `json:"value_sum"`
		GradSum         *float64 `json:"grad_sum"`
		MessageContains []string `json:"message_contains"`
		Field           *string
		Node            *int
		Ops             []struct {
			Name     string
			Arity    uint32
			Variadic bool
		}
	}
}

// conformanceServer is the suite's server, which tests/test_go_client.py starts.
func conformanceServer(t *testing.T) (target, token string) {
	target = os.Getenv("GRADSERVE_CONFORMANCE_TARGET")
	if target == "" {
		t.Skip("GRADSERVE_CONFORMANCE_TARGET is not set: run through tests/test_go_client.py")
	}
	return target, os.Getenv("GRADSERVE_CONFORMANCE_TOKEN")
}

func TestConformance(t *testing.T) {
	target, token := conformanceServer(t)
	data, err := os.ReadFile(os.Getenv("GRADSERVE_CONFORMANCE_CASES"))
	if err != nil {
		t.Fatal(err)
	}
	var s suite
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	c := dial(t, target, WithToken(token))
	started := time.Now()
	for _, tc := range s.Cases {
		tc := tc
		t.Run(tc.Name, func(t *testing.T) {
			r := &runner{t: t, client: c, token: token, target: target, tolerance: s.Tolerance}
			if tc.Graph != nil {
				r.build(tc.Graph.Nodes, tc.Graph.Raw, tc.Graph.Chain)
			}
			for i := range tc.Calls {
				r.run(&tc.Calls[i])
			}
		})
	}
	t.Logf("conformance suite: %d cases in %.2f s", len(s.Cases), time.Since(started).Seconds())
}

func dial(t *testing.T, target string, options ...Option) *Client {
	t.Helper()
	c, err := Dial(target, options...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type runner struct {
	t         *testing.T
	client    *Client
	token     string
	target    string
	tolerance struct{ Absolute, Relative float64 }
	graph     *Graph
	nodes     []Node
	raw       *pb.Graph
}

func (r *runner) build(nodes []node, raw *rawGraph, chain *chain) {
	if raw != nil {
		r.raw = &pb.Graph{OpNames: raw.OpNames, NodeOps: raw.NodeOps, InputCounts: raw.InputCounts,
			InputIds: raw.InputIDs, LeafValues: raw.LeafValues, Labels: raw.Labels}
		return
	}
	r.graph = NewGraph()
	add := func(n node) {
		if n.Leaf != nil {
			r.nodes = append(r.nodes, r.graph.Leaf(*n.Leaf).Label(n.Label))
			return
		}
		inputs := make([]Node, len(n.Inputs))
		for i, id := range n.Inputs {
			if id < 0 {
				id += len(r.nodes)
			}
			inputs[i] = r.nodes[id]
		}
		r.nodes = append(r.nodes, r.graph.Apply(n.Op, inputs...).Label(n.Label))
	}
	if chain == nil {
		for _, n := range nodes {
			add(n)
		}
		return
	}
	for _, n := range chain.Leaves {
		add(n)
	}
	for i := 0; i < chain.Repeat; i++ {
		for _, n := range chain.Steps {
			add(n)
		}
	}
}

func (r *runner) picks(ids []int) []Node {
	out := make([]Node, len(ids))
	for i, id := range ids {
		out[i] = r.nodes[id]
	}
	return out
}

func (r *runner) run(c *call) {
	t, spec := r.t, &c.Request
	client := r.client
	if spec.Token != nil {
		options := []Option{}
		if *spec.Token != "" {
			options = append(options, WithToken(*spec.Token))
		}
		client = dial(t, r.target, options...)
	}
	if spec.Target == "unreachable" {
		client = dial(t, unusedTarget(t), WithToken(r.token))
	}
	ctx := context.Background()
	if spec.DeadlineMs > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(spec.DeadlineMs)*time.Millisecond)
		defer cancel()
	}
	if c.RPC == "ListOps" {
		r.checkOps(client, ctx, c)
		return
	}
	var result *Result
	var chunks int
	var err error
	switch {
	case r.raw != nil || spec.PlanDigest != "":
		result, chunks, err = r.rawCall(client, ctx, c)
	case c.RPC == "Evaluate":
		result, err = client.Evaluate(ctx, r.graph, r.request(spec))
		chunks = 1
	default:
		result, chunks, err = r.stream(client, ctx, r.request(spec), spec.CancelAfterChunks)
	}
	r.check(c, result, chunks, err)
}

func (r *runner) request(spec *callRequest) *Request {
	if spec.Plan == "previous" && r.graph.PlanDigest() == nil {
		r.t.Fatal("the graph has no plan digest to reuse")
	}
	for i, value := range spec.LeafValues {
		r.graph.SetLeaf(r.leaf(i), value)
	}
	return &Request{
		Outputs: r.picks(spec.Outputs), Seeds: spec.Seeds,
		Selection: pb.Selection(pb.Selection_value[spec.Selection]), Nodes: r.picks(spec.Nodes),
		Rows: spec.Rows, AllowNonFinite: spec.AllowNonFinite, ChunkSize: spec.ChunkSize,
	}
}

// leaf is the graph's i-th leaf.
func (r *runner) leaf(i int) Node {
	for _, n := range r.nodes {
		if _, isLeaf := r.graph.leafOf[n.ID]; isLeaf {
			if i == 0 {
				return n
			}
			i--
		}
	}
	r.t.Fatalf("the graph has no leaf %d", i)
	return Node{}
}

// stream collects a Stream's chunks into one Result, cancelling after cancelAfter chunks.
func (r *runner) stream(client *Client, ctx context.Context, req *Request, cancelAfter int) (*Result, int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	all := &Result{}
	chunks := 0
	err := client.Stream(ctx, r.graph, req, func(chunk *Chunk) error {
		chunks++
		if chunk.TotalNodes <= 0 {
			r.t.Errorf("chunk %d has total_nodes %d", chunks, chunk.TotalNodes)
		}
		all.NodeIDs = append(all.NodeIDs, chunk.NodeIDs...)
		all.Values = append(all.Values, chunk.Values...)
		all.Grads = append(all.Grads, chunk.Grads...)
		all.Rows, all.PlanDigest = chunk.Rows, chunk.PlanDigest
		if chunks == cancelAfter {
			cancel()
		}
		return nil
	})
	return all, chunks, err
}

// rawCall sends the case's request through the generated stub.
func (r *runner) rawCall(client *Client, ctx context.Context, c *call) (*Result, int, error) {
	spec := &c.Request
	graph := r.raw
	if graph == nil {
		graph = r.graph.Proto()
	}
	request := &pb.EvaluateRequest{Graph: graph}
	if spec.PlanDigest != "" {
		digest, err := hex.DecodeString(spec.PlanDigest)
		if err != nil {
			r.t.Fatal(err)
		}
		request.PlanDigest = digest
		request.Graph = &pb.Graph{LeafValues: graph.LeafValues}
	}
	if spec.LeafValues != nil {
		request.Graph.LeafValues = spec.LeafValues
	}
	if c.RPC != "Evaluate" {
		r.t.Fatalf("raw calls are Evaluate only, not %s", c.RPC)
	}
	response, err := client.Stub().Evaluate(ctx, request)
	if err != nil {
		return nil, 0, asError(err)
	}
	return &Result{NodeIDs: response.NodeIds, Values: response.Values, Grads: response.Grads,
		Rows: int(response.Rows), PlanDigest: response.PlanDigest}, 1, nil
}

func (r *runner) check(c *call, result *Result, chunks int, err error) {
	t, expect := r.t, &c.Expect
	if expect.Status != codes.OK {
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("expected %s, got %v", expect.Status, err)
		}
		if e.Code != expect.Status {
			t.Fatalf("expected %s, got %s: %s", expect.Status, e.Code, e.Message)
		}
		for _, text := range expect.MessageContains {
			if !strings.Contains(e.Message, text) {
				t.Errorf("%q not in the message %q", text, e.Message)
			}
		}
		if expect.Field != nil && e.Field != *expect.Field {
			t.Errorf("field %q, expected %q", e.Field, *expect.Field)
		}
		if expect.Node != nil && e.Node != *expect.Node {
			t.Errorf("node %d, expected %d (%s)", e.Node, *expect.Node, e.Message)
		}
		return
	}
	if err != nil {
		t.Fatalf("the call failed: %v", err)
	}
	if expect.NodeIDs != nil {
		if !equalIDs(result.NodeIDs, expect.NodeIDs) {
			t.Fatalf("node ids %v, expected %v", result.NodeIDs, expect.NodeIDs)
		}
		r.close("values", result.Values, expect.Values)
		r.close("grads", result.Grads, expect.Grads)
	}
	if expect.Samples != nil {
		position := map[uint32]int{}
		for i, id := range result.NodeIDs {
			position[id] = i
		}
		var values, grads []float64
		for _, id := range expect.Samples.NodeIDs {
			values = append(values, result.Values[position[id]])
			grads = append(grads, result.Grads[position[id]])
		}
		r.close("sample values", values, expect.Samples.Values)
		r.close("sample grads", grads, expect.Samples.Grads)
		r.close("value sum", []float64{sum(result.Values)}, []float64{*expect.ValueSum})
		r.close("grad sum", []float64{sum(result.Grads)}, []float64{*expect.GradSum})
	}
	if expect.TotalNodes != 0 && len(result.NodeIDs) != expect.TotalNodes {
		t.Errorf("%d nodes, expected %d", len(result.NodeIDs), expect.TotalNodes)
	}
	if expect.Chunks != 0 && chunks != expect.Chunks {
		t.Errorf("%d chunks, expected %d", chunks, expect.Chunks)
	}
	if expect.Rows != 0 && result.Rows != expect.Rows {
		t.Errorf("%d rows, expected %d", result.Rows, expect.Rows)
	}
	if expect.PlanDigestLength != 0 && len(result.PlanDigest) != expect.PlanDigestLength {
		t.Errorf("a %d-byte plan digest, expected %d", len(result.PlanDigest), expect.PlanDigestLength)
	}
}

func (r *runner) checkOps(client *Client, ctx context.Context, c *call) {
	ops, err := client.ListOps(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	listed := map[string]*pb.OpInfo{}
	names := []string{}
	for _, op := range ops {
		listed[op.Name] = op
		names = append(names, op.Name)
	}
	if !sort.StringsAreSorted(names) {
		r.t.Errorf("ops not sorted: %v", names)
	}
	for _, want := range c.Expect.Ops {
		op, ok := listed[want.Name]
		if !ok || op.Arity != want.Arity || op.Variadic != want.Variadic {
			r.t.Errorf("op %s: got %v", want.Name, op)
		}
	}
}

func (r *runner) close(what string, got, want []float64) {
	if len(got) != len(want) {
		r.t.Fatalf("%s: %d results, expected %d", what, len(got), len(want))
	}
	for i := range got {
		if math.Abs(got[i]-want[i]) > r.tolerance.Absolute+r.tolerance.Relative*math.Abs(want[i]) {
			r.t.Errorf("%s[%d]: %v, expected %v", what, i, got[i], want[i])
		}
	}
}

func sum(xs []float64) float64 {
	total := 0.0
	for _, x := range xs {
		total += x
	}
	return total
}

func equalIDs(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// unusedTarget is an address where nothing listens (a port that was free a moment ago).
func unusedTarget(t *testing.T) string {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	return listener.Addr().String()
}
