package gradserve

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a failed call: its gRPC status code, the server's message and, for a client
// error (INVALID_ARGUMENT, RESOURCE_EXHAUSTED), the google.rpc.BadRequest field violations
// the server attached. Get one with errors.As; Code tells what happened (see the error
// model in gradserve.proto):
//
//	var e *gradserve.Error
//	if errors.As(err, &e) && e.Code == codes.InvalidArgument { fmt.Println(e.Field, e.Node) }
//
// When the client can say what to do, Message is that one line, in the Python and Node.js
// clients' words (nothing at the target, TLS on one side only, a client certificate the
// server refused, a server certificate the client does not trust, the client's timeout),
// and Error() is "gradserve: " and Message.
type Error struct {
	Code    codes.Code
	Message string
	// Auth is true when the server refused the client's TLS identity (mutual TLS).
	Auth bool
	// explained is true when Message is the client's own advice rather than the server's.
	explained bool
	// Field is the first violation's request field, e.g. "graph.input_ids[7]" ("" if none).
	Field string
	// Node is the offending node's id when the message names one, else -1.
	Node int
	// Violations are all of the BadRequest's field violations.
	Violations []*errdetails.BadRequest_FieldViolation
	status     *status.Status
}

func (e *Error) Error() string {
	if e.explained {
		return "gradserve: " + e.Message
	}
	return fmt.Sprintf("gradserve: %s: %s", e.Code, e.Message)
}

// GRPCStatus lets status.FromError and status.Code see the original status.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Is makes errors.Is(err, gradserve.ErrNotFound) and the like match on the code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.status == nil && t.Code == e.Code
}

// Sentinels for errors.Is, one per status the server uses.
var (
	ErrInvalidArgument   = &Error{Code: codes.InvalidArgument, Node: -1}
	ErrResourceExhausted = &Error{Code: codes.ResourceExhausted, Node: -1}
	ErrNotFound          = &Error{Code: codes.NotFound, Node: -1}
	ErrUnauthenticated   = &Error{Code: codes.Unauthenticated, Node: -1}
	ErrDeadlineExceeded  = &Error{Code: codes.DeadlineExceeded, Node: -1}
	ErrCancelled         = &Error{Code: codes.Canceled, Node: -1}
	ErrUnavailable       = &Error{Code: codes.Unavailable, Node: -1}
	ErrInternal          = &Error{Code: codes.Internal, Node: -1}
)

var nodePrefix = regexp.MustCompile(`^node (\d+)[ :]`)

// asError turns a gRPC error (or a context error) into *Error; nil stays nil.
func asError(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	s, ok := status.FromError(err)
	if !ok {
		s = status.FromContextError(err)
	}
	e := &Error{Code: s.Code(), Message: s.Message(), Node: -1, status: s}
	for _, detail := range s.Details() {
		if bad, ok := detail.(*errdetails.BadRequest); ok {
			e.Violations = append(e.Violations, bad.GetFieldViolations()...)
		}
	}
	if len(e.Violations) > 0 {
		e.Field = e.Violations[0].GetField()
	}
	if m := nodePrefix.FindStringSubmatch(e.Message); m != nil {
		e.Node, _ = strconv.Atoi(m[1])
	}
	return e
}

// contextError is ctx's error as *Error (DEADLINE_EXCEEDED or CANCELLED), or nil.
func contextError(ctx context.Context) error {
	if ctx.Err() == nil {
		return nil
	}
	return asError(status.FromContextError(ctx.Err()).Err())
}

// The one-line messages, the same words as the Python and Node.js clients'
// (client/gradserve/client/unreachable.py and errors.py; tests/test_client_messages.py).
const (
	msgNoServer               = "no gradserve server answers at %s: start one with `gradserve serve`, or set GRADSERVE_TARGET"
	msgServerWantsTLS         = "the server at %s expects TLS and this client connects in plaintext: give the client the CA certificate that signed the server's"
	msgServerWantsPlaintext   = "the server at %s speaks plaintext and this client connects with TLS: connect without TLS, or start the server with --tls-cert and --tls-key"
	msgServerWantsCertificate = "the server at %s refused the TLS connection: it requires a client certificate signed by a CA it trusts (mutual TLS): give the client its certificate and key"
	msgServerNotTrusted       = "the server at %s presented a certificate this client does not trust: give the client the CA certificate that signed it"
	msgDeadline               = "the call took longer than its timeout of %s s: pass a larger timeout, or send a smaller graph"
	msgUnavailable            = "the server at %s is unavailable: %s"
)

var (
	nothingListens = regexp.MustCompile(`connection refused|no such host|produced zero addresses|name resolver error`)
	wrongVersion   = regexp.MustCompile(`first record does not look like a tls handshake|wrong version number`)
	notTrusted     = regexp.MustCompile(`certificate signed by unknown authority|certificate is not trusted|x509:`)
	closedByPeer   = regexp.MustCompile(`connection closed|use of closed network connection|connection reset by peer|broken pipe|eof|bad certificate|certificate required|unknown certificate authority|handshake failure`)
)

// where is what a call's error message names: the target, whether the channel uses TLS,
// and the client's timeout when it applied to the call (0 otherwise).
type where struct {
	target  string
	tls     bool
	timeout time.Duration
}

// explain rewrites a failed call's *Error in the clients' shared words where they apply.
func (w where) explain(err error) error {
	var e *Error
	if !errors.As(err, &e) {
		return err
	}
	switch e.Code {
	case codes.Unavailable:
		e.Message, e.Auth = w.unavailable(e.Message)
		e.explained = true
	case codes.DeadlineExceeded:
		if w.timeout > 0 {
			e.Message = fmt.Sprintf(msgDeadline, strconv.FormatFloat(w.timeout.Seconds(), 'g', 6, 64))
			e.explained = true
		}
	case codes.ResourceExhausted:
		e.explained = true // the server's message says what to do
	}
	return err
}

// unavailable is the message for an UNAVAILABLE call, told apart by gRPC's words and by
// whether the channel uses TLS, and whether the server refused the client's certificate.
func (w where) unavailable(details string) (string, bool) {
	words := strings.ToLower(details)
	switch {
	case nothingListens.MatchString(words):
		return fmt.Sprintf(msgNoServer, w.target), false
	case w.tls && wrongVersion.MatchString(words):
		return fmt.Sprintf(msgServerWantsPlaintext, w.target), false
	case w.tls && notTrusted.MatchString(words):
		return fmt.Sprintf(msgServerNotTrusted, w.target), false
	case w.tls && closedByPeer.MatchString(words):
		return fmt.Sprintf(msgServerWantsCertificate, w.target), true
	case !w.tls && closedByPeer.MatchString(words):
		return fmt.Sprintf(msgServerWantsTLS, w.target), false
	}
	return fmt.Sprintf(msgUnavailable, w.target, details), false
}
