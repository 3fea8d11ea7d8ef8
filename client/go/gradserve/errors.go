package gradserve

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"

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
type Error struct {
	Code    codes.Code
	Message string
	// Field is the first violation's request field, e.g. "graph.input_ids[7]" ("" if none).
	Field string
	// Node is the offending node's id when the message names one, else -1.
	Node int
	// Violations are all of the BadRequest's field violations.
	Violations []*errdetails.BadRequest_FieldViolation
	status     *status.Status
}

func (e *Error) Error() string {
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
