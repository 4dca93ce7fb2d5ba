package ravi

import (
	"context"
	"errors"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"google.golang.org/grpc/codes"
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

// multiplexer sends the Sends of a node to one peer over one Multiplex stream
// (docs/protocol.md, "Multiplex"), as Python nodes do: each call is a frame
// with its own call id and timeout, the frames that are ready together go out
// as one message, and a call whose context ends first sends a cancel frame so
// the peer cancels its handler. The stream opens on first use and again after
// it breaks; calls in flight when it breaks fail UNAVAILABLE. A peer that
// answers the stream with UNIMPLEMENTED (a contract 1.1.0 member) is called
// with unary Send from then on.
type multiplexer struct {
	svc   meshv1.AgentServiceClient
	ctx   context.Context // ends with close, or when the node stops
	close context.CancelFunc
	unary atomic.Bool

	mu      sync.Mutex
	current *muxStream
	nextID  uint64
	calls   int           // in flight, on the stream or unary
	idle    chan struct{} // closed when calls reaches 0, for drain
}

func newMultiplexer(parent context.Context, svc meshv1.AgentServiceClient) *multiplexer {
	ctx, cancel := context.WithCancel(parent)
	return &multiplexer{svc: svc, ctx: ctx, close: cancel}
}

// drain waits until no call is in flight, timeout at most.
func (m *multiplexer) drain(timeout time.Duration) {
	m.mu.Lock()
	if m.calls == 0 {
		m.mu.Unlock()
		return
	}
	if m.idle == nil {
		m.idle = make(chan struct{})
	}
	idle := m.idle
	m.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
	}
}

// abort ends the current stream, if any: its calls in flight fail UNAVAILABLE
// with cause; the next call opens a new stream.
func (m *multiplexer) abort(cause error) {
	m.mu.Lock()
	s := m.current
	m.mu.Unlock()
	if s != nil {
		s.end(&Error{Code: codes.Unavailable, Message: cause.Error()})
	}
}

// begin counts a call in flight (for drain); finished ends it.
func (m *multiplexer) begin() {
	m.mu.Lock()
	m.calls++
	m.mu.Unlock()
}

func (m *multiplexer) finished() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls--
	if m.calls == 0 && m.idle != nil {
		close(m.idle)
		m.idle = nil
	}
}

// errUseUnary says the peer does not serve Multiplex: send the call as a
// unary Send.
var errUseUnary = errors.New("ravi: the peer does not serve Multiplex")

// send sends req and waits for its outcome until ctx is done.
func (m *multiplexer) send(ctx context.Context, req *meshv1.SendRequest) (*meshv1.SendResponse, error) {
	if !m.unary.Load() {
		resp, err := m.sendFrame(ctx, req)
		if !errors.Is(err, errUseUnary) {
			return resp, err
		}
	}
	return m.svc.Send(ctx, req)
}

func (m *multiplexer) sendFrame(ctx context.Context, req *meshv1.SendRequest) (*meshv1.SendResponse, error) {
	frame := &meshv1.CallFrame{Kind: &meshv1.CallFrame_Send{Send: req}}
	if deadline, ok := ctx.Deadline(); ok {
		// At least 1 ms (0 would mean the peer's default), at most what the
		// field holds (about 49 days).
		ms := min(max(time.Until(deadline).Milliseconds(), 1), math.MaxUint32)
		frame.TimeoutMillis = uint32(ms)
	}
	s, outcome := m.start(frame)
	select {
	case o := <-outcome:
		return outcomeOf(o)
	case <-s.done:
		select {
		case o := <-outcome: // answered just before the stream ended
			return outcomeOf(o)
		default:
			return nil, s.err
		}
	case <-ctx.Done():
		s.cancelCall(frame.GetCallId())
		return nil, FromError(ctx.Err())
	}
}

func outcomeOf(o *meshv1.CallOutcome) (*meshv1.SendResponse, error) {
	if f := o.GetFailure(); f != nil {
		return nil, &Error{Code: codes.Code(f.GetCode()), Reason: f.GetReason(), Message: f.GetMessage(), Metadata: f.GetMetadata()}
	}
	return o.GetResult(), nil
}

// start puts frame on the current stream (opening one if there is none) and
// returns the stream and the channel its outcome arrives on.
func (m *multiplexer) start(frame *meshv1.CallFrame) (*muxStream, <-chan *meshv1.CallOutcome) {
	outcome := make(chan *meshv1.CallOutcome, 1)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextID++
	frame.CallId = m.nextID
	s := m.current
	if s == nil {
		s = m.open()
		m.current = s
	}
	s.mu.Lock()
	s.pending[frame.CallId] = outcome
	s.outbox = append(s.outbox, frame)
	s.mu.Unlock()
	s.wake()
	return s, outcome
}

// open starts a stream: its writer opens the gRPC stream and then writes the
// frames queued, its reader hands out the outcomes.
func (m *multiplexer) open() *muxStream {
	ctx, cancel := context.WithCancel(m.ctx)
	s := &muxStream{m: m, cancel: cancel, pending: map[uint64]chan *meshv1.CallOutcome{}, ready: make(chan struct{}, 1), done: make(chan struct{})}
	go s.write(ctx)
	return s
}

// muxStream is one Multiplex stream to a peer and the calls in flight on it.
type muxStream struct {
	m      *multiplexer
	cancel context.CancelFunc
	ready  chan struct{} // a frame waits in outbox
	done   chan struct{} // closed once the stream ended; err says why
	err    error

	mu      sync.Mutex
	pending map[uint64]chan *meshv1.CallOutcome
	outbox  []*meshv1.CallFrame
	ended   bool
}

func (s *muxStream) wake() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

func (s *muxStream) cancelCall(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, inflight := s.pending[id]; !inflight || s.ended {
		return
	}
	delete(s.pending, id)
	s.outbox = append(s.outbox, &meshv1.CallFrame{CallId: id, Kind: &meshv1.CallFrame_Cancel{Cancel: &meshv1.CancelCall{}}})
	s.wake()
}

func (s *muxStream) write(ctx context.Context) {
	stream, err := s.m.svc.Multiplex(ctx)
	if err != nil {
		s.end(err)
		return
	}
	go s.read(stream)
	for {
		select {
		case <-s.ready:
		case <-s.done:
			return
		}
		s.mu.Lock()
		batch := s.outbox
		s.outbox = nil
		s.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		if err := stream.Send(&meshv1.MultiplexRequest{Calls: batch}); err != nil {
			// The stream is over; the reader gets its status and ends it.
			return
		}
	}
}

func (s *muxStream) read(stream meshv1.AgentService_MultiplexClient) {
	for {
		resp, err := stream.Recv()
		if err != nil {
			s.end(err)
			return
		}
		s.mu.Lock()
		for _, o := range resp.GetCalls() {
			if outcome, ok := s.pending[o.GetCallId()]; ok {
				delete(s.pending, o.GetCallId())
				outcome <- o
			}
		}
		s.mu.Unlock()
	}
}

// end ends the stream with the error of its gRPC stream: the calls in flight
// fail with it, and the next call opens a new stream.
func (s *muxStream) end(cause error) {
	m := s.m
	m.mu.Lock()
	if m.current == s {
		m.current = nil
	}
	m.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	s.ended = true
	switch code := CodeOf(cause); {
	case code == codes.Unimplemented:
		m.unary.Store(true)
		s.err = errUseUnary
	case errors.Is(cause, io.EOF):
		s.err = &Error{Code: codes.Unavailable, Message: "the peer ended the Multiplex stream"}
	default:
		s.err = &Error{Code: codes.Unavailable, Message: "the Multiplex stream to the peer broke: " + FromError(cause).Error()}
	}
	s.pending = nil
	s.outbox = nil
	close(s.done)
	s.cancel()
}
