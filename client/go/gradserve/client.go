// Package gradserve calls a gradserve server from Go: build a graph of scalar ops, then
// evaluate it and get every node's value and gradient.
//
//	c, err := gradserve.Dial("localhost:50051", gradserve.WithTimeout(time.Minute))
//	g := gradserve.NewGraph()
//	x, w := g.Leaf(2).Label("x"), g.Leaf(-3).Label("w")
//	y := x.Mul(w).Tanh()
//	err = c.Backward(ctx, y) // then x.Grad() is dy/dx
//
// Errors are *Error, carrying the status code and the server's BadRequest details. The
// generated stubs are in package gradservev1 (github.com/gradserve/gradserve/client/go/gradservev1).
package gradserve

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "github.com/gradserve/gradserve/client/go/gradservev1"
)

// MaxMessageBytes is the server's default message limit, which clients match by default
// (gRPC's own default receive limit is 4 MiB).
const MaxMessageBytes = 64 << 20

// StreamAbove is the node count above which Backward uses EvaluateStream, whose chunks
// never approach a message limit.
const StreamAbove = 1 << 20

var nan = math.NaN()

// Client is a connection to a gradserve server. It is safe for concurrent use (a Graph is
// not).
type Client struct {
	conn    *grpc.ClientConn
	stub    pb.GradientServiceClient
	timeout time.Duration
	target  string
	tls     bool
}

// DefaultTarget is where Dial("") connects when GRADSERVE_TARGET is not set.
const DefaultTarget = "localhost:50051"

type settings struct {
	tls             *tls.Config
	caFile          string
	certFile        string
	keyFile         string
	token           string
	timeout         time.Duration
	maxMessageBytes int
}

// Option configures Dial.
type Option func(*settings)

// WithTLS connects over TLS, trusting the CA certificates in the PEM file caFile ("" for
// the system's roots).
func WithTLS(caFile string) Option {
	return func(s *settings) {
		s.caFile = caFile
		if s.tls == nil {
			s.tls = &tls.Config{MinVersion: tls.VersionTLS12}
		}
	}
}

// WithClientCertificate presents this certificate and key (PEM files) to the server:
// mutual TLS. Combine with WithTLS to choose the CA.
func WithClientCertificate(certFile, keyFile string) Option {
	return func(s *settings) {
		s.certFile, s.keyFile = certFile, keyFile
		if s.tls == nil {
			s.tls = &tls.Config{MinVersion: tls.VersionTLS12}
		}
	}
}

// WithTLSConfig connects over TLS with a ready tls.Config.
func WithTLSConfig(config *tls.Config) Option {
	return func(s *settings) { s.tls = config.Clone() }
}

// WithToken sends "authorization: Bearer <token>" with every call. Use it with TLS: on a
// plaintext connection anyone on the path can read the token.
func WithToken(token string) Option {
	return func(s *settings) { s.token = token }
}

// WithTimeout bounds every call whose context has no deadline of its own (a context's
// deadline always wins). Without it, the server's default deadline (300 s) applies.
func WithTimeout(timeout time.Duration) Option {
	return func(s *settings) { s.timeout = timeout }
}

// WithMaxMessageBytes sets the largest message sent or received (default MaxMessageBytes).
func WithMaxMessageBytes(n int) Option {
	return func(s *settings) { s.maxMessageBytes = n }
}

// Dial connects to target ("host:port"; "" for the GRADSERVE_TARGET environment variable,
// else DefaultTarget) in plaintext unless a TLS option is given. It does not wait for the
// server: a server that is down makes calls fail with UNAVAILABLE.
func Dial(target string, options ...Option) (*Client, error) {
	if target == "" {
		target = strings.TrimSpace(os.Getenv("GRADSERVE_TARGET"))
	}
	if target == "" {
		target = DefaultTarget
	}
	s := settings{maxMessageBytes: MaxMessageBytes}
	for _, option := range options {
		option(&s)
	}
	dial := []grpc.DialOption{
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(s.maxMessageBytes), grpc.MaxCallSendMsgSize(s.maxMessageBytes),
			// gRPC retries only a request it still holds: 256 KiB by default.
			grpc.MaxRetryRPCBufferSize(s.maxMessageBytes),
		),
		// Retry UNAVAILABLE with backoff (service_config.json, the policy every client
		// shares): every call is a pure function of its request.
		grpc.WithDefaultServiceConfig(serviceConfig),
	}
	if s.tls == nil {
		dial = append(dial, grpc.WithInsecure())
	} else {
		config, err := s.tlsConfig()
		if err != nil {
			return nil, err
		}
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(config)))
	}
	if s.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer(s.token)))
	}
	conn, err := grpc.Dial(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("gradserve: dial %s: %w", target, err)
	}
	client := &Client{conn: conn, stub: pb.NewGradientServiceClient(conn), timeout: s.timeout}
	client.target, client.tls = target, s.tls != nil
	return client, nil
}

func (s *settings) tlsConfig() (*tls.Config, error) {
	config := s.tls.Clone()
	if s.caFile != "" {
		pem, err := os.ReadFile(s.caFile)
		if err != nil {
			return nil, fmt.Errorf("gradserve: CA file: %w", err)
		}
		config.RootCAs = x509.NewCertPool()
		if !config.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("gradserve: no PEM certificate in %s", s.caFile)
		}
	}
	if s.certFile != "" {
		pair, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
		if err != nil {
			return nil, fmt.Errorf("gradserve: client certificate: %w", err)
		}
		config.Certificates = append(config.Certificates, pair)
	}
	return config, nil
}

// bearer is a token sent as call metadata.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity is false so that a token also works behind a TLS-terminating
// proxy or on a trusted network; WithToken's documentation warns about plaintext.
func (bearer) RequireTransportSecurity() bool { return false }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Stub is the generated client on this connection, for calls this package does not wrap;
// TLS, the token and the message limits apply to it too.
func (c *Client) Stub() pb.GradientServiceClient { return c.stub }

// withTimeout applies the client's timeout to a context without a deadline; the where
// of the call's errors names the timeout when it applied.
func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc, where) {
	w := where{target: c.target, tls: c.tls}
	if _, has := ctx.Deadline(); has || c.timeout <= 0 {
		ctx, cancel := context.WithCancel(ctx)
		return ctx, cancel, w
	}
	w.timeout = c.timeout
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	return ctx, cancel, w
}

// ListOps lists the server's ops, sorted by name.
func (c *Client) ListOps(ctx context.Context) ([]*pb.OpInfo, error) {
	ctx, cancel, w := c.withTimeout(ctx)
	defer cancel()
	response, err := c.stub.ListOps(ctx, &pb.ListOpsRequest{})
	if err != nil {
		return nil, w.explain(asError(err))
	}
	return response.GetOps(), nil
}

// Request says what to evaluate; the zero Request differentiates the last node and
// returns every node's results.
type Request struct {
	// Outputs seed the backward pass (default: the graph's last node).
	Outputs []Node
	// Seeds are the outputs' seed gradients, one per output (default 1 each).
	Seeds []float64
	// Selection chooses the results (default: Nodes if given, else every node).
	Selection pb.Selection
	// Nodes are the nodes to return, in this order (may repeat).
	Nodes []Node
	// Rows, when given, evaluate the graph at len(Rows) rows of leaf values at once (one
	// value per leaf each, in leaf order) instead of the graph's own leaf values.
	Rows [][]float64
	// AllowNonFinite lets NaN and Inf through instead of failing the call.
	AllowNonFinite bool
	// ChunkSize is Stream's most nodes per chunk (0: the server's default).
	ChunkSize int
	// LeafTangents, when given, is a direction for the leaves, laid out like their values
	// (one per leaf, row by row with Rows): the results then carry ValueTangents (JVPs) and
	// GradTangents (for the leaves, Hessian-vector products). See the .proto.
	LeafTangents []float64
}

// Result holds the selected nodes' values and gradients, row by row:
// Values[r*len(NodeIDs)+j] is node NodeIDs[j] at row r.
type Result struct {
	NodeIDs    []uint32
	Values     []float64
	Grads      []float64
	Rows       int
	PlanDigest []byte // 16 bytes
	// With Request.LeafTangents: each selected node's value and gradient tangents, laid
	// out as Values and Grads.
	ValueTangents []float64
	GradTangents  []float64
}

// Value is the value of the j-th selected node at row r.
func (r *Result) Value(row, j int) float64 { return r.Values[row*len(r.NodeIDs)+j] }

// Grad is the gradient of the j-th selected node at row r.
func (r *Result) Grad(row, j int) float64 { return r.Grads[row*len(r.NodeIDs)+j] }

// Chunk is one EvaluateStream message: a Result for the next part of the selection, and
// the size of the whole selection.
type Chunk struct {
	Result
	TotalNodes int
	FirstRow   int // the first row this chunk holds (0 unless rows came in blocks)
}

// Evaluate evaluates g and returns the selected nodes' results in one message. The
// graph's structure goes over the wire once: later calls send its plan digest and leaf
// values, and the whole graph again only if the server answers NOT_FOUND.
func (c *Client) Evaluate(ctx context.Context, g *Graph, req *Request) (*Result, error) {
	ctx, cancel, w := c.withTimeout(ctx)
	defer cancel()
	call := func(request *pb.EvaluateRequest) (*Result, error) {
		response, err := c.stub.Evaluate(ctx, request)
		if err != nil {
			return nil, err
		}
		return &Result{
			NodeIDs: response.GetNodeIds(), Values: response.GetValues(),
			Grads: response.GetGrads(), Rows: int(response.GetRows()),
			PlanDigest:    response.GetPlanDigest(),
			ValueTangents: response.GetValueTangents(), GradTangents: response.GetGradTangents(),
		}, nil
	}
	result, err := withPlan(g, req, call)
	return result, w.explain(err)
}

// Stream evaluates g like Evaluate, but receives the results in bounded chunks, calling
// each for every chunk as it arrives. An error from each cancels the call and is returned.
func (c *Client) Stream(ctx context.Context, g *Graph, req *Request, each func(*Chunk) error) error {
	ctx, cancel, w := c.withTimeout(ctx)
	defer cancel()
	call := func(request *pb.EvaluateRequest) (*Result, error) {
		stream, err := c.stub.EvaluateStream(ctx, request)
		if err != nil {
			return nil, err
		}
		var last *Result
		for {
			message, err := stream.Recv()
			if err == io.EOF {
				return last, nil
			}
			if err != nil {
				return nil, err
			}
			chunk := &Chunk{Result{
				NodeIDs: message.GetNodeIds(), Values: message.GetValues(),
				Grads: message.GetGrads(), Rows: int(message.GetRows()),
				PlanDigest:    message.GetPlanDigest(),
				ValueTangents: message.GetValueTangents(), GradTangents: message.GetGradTangents(),
			}, int(message.GetTotalNodes()), int(message.GetFirstRow())}
			if err := each(chunk); err != nil {
				return nil, callbackError{err}
			}
			last = &chunk.Result
		}
	}
	_, err := withPlan(g, req, call)
	var callback callbackError
	if errors.As(err, &callback) {
		return callback.err
	}
	return w.explain(err)
}

// callbackError carries Stream's callback's own error past the status translation.
type callbackError struct{ err error }

func (e callbackError) Error() string { return e.err.Error() }

// Backward evaluates loss's graph and differentiates loss, then fills every node's Value
// and Grad (read them with Node.Value and Node.Grad). Graphs above StreamAbove nodes are
// received through EvaluateStream.
func (c *Client) Backward(ctx context.Context, loss Node) error {
	g := loss.g
	req := &Request{Outputs: []Node{loss}, Selection: pb.Selection_SELECTION_ALL}
	values, grads := make([]float64, g.Len()), make([]float64, g.Len())
	keep := func(r *Result) {
		for j, id := range r.NodeIDs {
			values[id], grads[id] = r.Values[j], r.Grads[j]
		}
	}
	if g.Len() > StreamAbove {
		err := c.Stream(ctx, g, req, func(chunk *Chunk) error { keep(&chunk.Result); return nil })
		if err != nil {
			return err
		}
	} else {
		result, err := c.Evaluate(ctx, g, req)
		if err != nil {
			return err
		}
		keep(result)
	}
	g.values, g.grads = values, grads
	return nil
}

// withPlan makes the call with g's plan digest when it has one, resending the whole
// graph if the server no longer holds that plan, and remembers the digest returned.
func withPlan(g *Graph, req *Request, call func(*pb.EvaluateRequest) (*Result, error)) (*Result, error) {
	request, err := g.request(req)
	if err != nil {
		return nil, err
	}
	result, err := call(request)
	if request.PlanDigest != nil && status.Code(err) == codes.NotFound {
		g.digest = nil
		request.Graph, request.PlanDigest = g.Proto(), nil
		request.Graph.LeafValues = leafValues(g, req)
		result, err = call(request)
	}
	var callback callbackError
	if errors.As(err, &callback) {
		return nil, err
	}
	if err != nil {
		return nil, asError(err)
	}
	if result != nil && len(result.PlanDigest) > 0 {
		g.digest = result.PlanDigest
	}
	return result, nil
}

// request is req's wire form for g: the whole graph, or its plan digest and leaf values.
func (g *Graph) request(req *Request) (*pb.EvaluateRequest, error) {
	if req == nil {
		req = &Request{}
	}
	if g.Len() == 0 {
		return nil, fmt.Errorf("gradserve: the graph is empty")
	}
	for _, row := range req.Rows {
		if len(row) != g.Leaves() {
			return nil, fmt.Errorf("gradserve: a row has %d values; the graph has %d leaves", len(row), g.Leaves())
		}
	}
	request := &pb.EvaluateRequest{
		Outputs:        ids(g, req.Outputs),
		Seeds:          req.Seeds,
		Selection:      req.Selection,
		Nodes:          ids(g, req.Nodes),
		AllowNonFinite: req.AllowNonFinite,
		ChunkSize:      uint32(req.ChunkSize),
		LeafTangents:   req.LeafTangents,
	}
	if len(req.Rows) > 0 {
		request.Rows = uint32(len(req.Rows))
	}
	if g.digest != nil {
		request.Graph = &pb.Graph{}
		request.PlanDigest = g.digest
	} else {
		request.Graph = g.Proto()
	}
	request.Graph.LeafValues = leafValues(g, req)
	return request, nil
}

func leafValues(g *Graph, req *Request) []float64 {
	if req == nil || len(req.Rows) == 0 {
		return g.leafValues
	}
	values := make([]float64, 0, len(req.Rows)*g.Leaves())
	for _, row := range req.Rows {
		values = append(values, row...)
	}
	return values
}

func ids(g *Graph, nodes []Node) []uint32 {
	out := make([]uint32, len(nodes))
	for i, n := range nodes {
		if n.g != g {
			panic("gradserve: a requested node belongs to another graph")
		}
		out[i] = n.ID
	}
	return out
}
