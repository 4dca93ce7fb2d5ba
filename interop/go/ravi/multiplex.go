package ravi

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
)

// Multiplex serves Send calls multiplexed over one stream: each call frame of a
// MultiplexRequest is handled exactly as a unary Send, with its own deadline,
// and answered with an outcome carrying the same call id; a cancel frame
// cancels a call, which then gets no answer.
func (s *service) Multiplex(stream meshv1.AgentService_MultiplexServer) error {
	n := s.n
	ctx := stream.Context()
	tc := incomingTrace(ctx)
	type inflight struct{ cancel context.CancelFunc }
	var (
		mu     sync.Mutex
		sendMu sync.Mutex
		calls  = map[uint64]*inflight{}
		wg     sync.WaitGroup
	)
	reply := func(outcome *meshv1.CallOutcome) {
		sendMu.Lock()
		defer sendMu.Unlock()
		if err := stream.Send(&meshv1.MultiplexResponse{Calls: []*meshv1.CallOutcome{outcome}}); err != nil {
			n.log.Debug("connect: cannot answer", "call_id", outcome.GetCallId(), "err", err)
		}
	}
	defer func() {
		mu.Lock()
		for _, c := range calls {
			c.cancel()
		}
		mu.Unlock()
		wg.Wait()
	}()
	for {
		request, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			// The caller sent all its calls: answer those in flight, then end.
			wg.Wait()
			return nil
		}
		if err != nil {
			return err
		}
		for _, frame := range request.GetCalls() {
			id := frame.GetCallId()
			switch kind := frame.GetKind().(type) {
			case *meshv1.CallFrame_Send:
				timeout := n.opts.DefaultTimeout
				if ms := frame.GetTimeoutMillis(); ms > 0 {
					timeout = time.Duration(ms) * time.Millisecond
				}
				cctx, cancel := context.WithTimeout(ctx, timeout)
				call := &inflight{cancel: cancel}
				mu.Lock()
				if prev := calls[id]; prev != nil {
					prev.cancel()
				}
				calls[id] = call
				mu.Unlock()
				n.inflight.Add(1)
				wg.Add(1)
				go func(id uint64, req *meshv1.SendRequest) {
					defer wg.Done()
					defer n.inflight.Add(-1)
					resp, err := n.serveSend(cctx, req, tc)
					mu.Lock()
					mine := calls[id] == call
					if mine {
						delete(calls, id)
					}
					mu.Unlock()
					cancel()
					if !mine {
						return // cancelled by the caller: no answer
					}
					if err != nil {
						reply(&meshv1.CallOutcome{CallId: id, Outcome: &meshv1.CallOutcome_Failure{Failure: failureOf(err)}})
						return
					}
					reply(&meshv1.CallOutcome{CallId: id, Outcome: &meshv1.CallOutcome_Result{Result: resp}})
				}(id, kind.Send)
			case *meshv1.CallFrame_Cancel:
				mu.Lock()
				if c := calls[id]; c != nil {
					delete(calls, id)
					c.cancel()
				}
				mu.Unlock()
			}
		}
	}
}

// failureOf is a failed call as a Multiplex frame carries it.
func failureOf(err error) *meshv1.CallFailure {
	e := FromError(err)
	return &meshv1.CallFailure{Code: int32(e.code()), Message: e.Message, Reason: e.Reason, Metadata: e.Metadata}
}
