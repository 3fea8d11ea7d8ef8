//go:build messages

package gradserve

// Run by tests/test_client_messages.py (go test -tags messages): each case of
// GRADSERVE_MESSAGE_CASES is called here, and its error's message printed for the Python
// test to compare with the Python and Node.js clients' messages.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"
)

type messageCase struct {
	Name      string  `json:"name"`
	Target    string  `json:"target"`
	TLS       bool    `json:"tls"`
	CA        string  `json:"ca"`
	Cert      string  `json:"cert"`
	Key       string  `json:"key"`
	TimeoutS  float64 `json:"timeout_s"`
	ChainSize int     `json:"chain"`
}

func TestMessages(t *testing.T) {
	var cases []messageCase
	if err := json.Unmarshal([]byte(os.Getenv("GRADSERVE_MESSAGE_CASES")), &cases); err != nil {
		t.Fatalf("GRADSERVE_MESSAGE_CASES: %v", err)
	}
	for _, c := range cases {
		options := []Option{WithTimeout(time.Duration(c.TimeoutS * float64(time.Second)))}
		if c.TLS {
			options = append(options, WithTLS(c.CA))
		}
		if c.Cert != "" {
			options = append(options, WithClientCertificate(c.Cert, c.Key))
		}
		client, err := Dial(c.Target, options...)
		if err != nil {
			t.Fatal(err)
		}
		if c.ChainSize > 0 {
			g := NewGraph()
			node := g.Leaf(0.5)
			for i := 0; i < c.ChainSize; i++ {
				node = node.Tanh()
			}
			err = client.Backward(context.Background(), node)
		} else {
			_, err = client.ListOps(context.Background())
		}
		client.Close()
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("%s: not a *gradserve.Error: %v", c.Name, err)
		}
		line, _ := json.Marshal([]any{c.Name, e.Message, e.Auth, e.Error()})
		fmt.Printf("MESSAGE %s\n", line)
	}
}
