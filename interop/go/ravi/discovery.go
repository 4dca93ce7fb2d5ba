package ravi

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Peers named by DNS, as Python's PeerDiscovery finds them: a peer address
// written dns:HOST:PORT (or dns:///HOST:PORT) names a pool of nodes, such as a
// Kubernetes headless Service, and each address HOST resolves to becomes a
// peer of its own, so rendezvous hashing places keys across every node of the
// pool. The name is resolved again every Options.PeerDNSInterval: new
// addresses are dialled, and an address that no longer resolves stops
// receiving new calls at once and is closed once the calls it is handling
// finished (at most peerDrainTimeout later). A resolution that fails keeps the
// addresses of the last one; a name that does not exist (NXDOMAIN, as a
// headless Service with no ready pod answers) has no address.

const (
	// DefaultPeerDNSInterval is how often dns: peers are resolved again.
	DefaultPeerDNSInterval = 10 * time.Second
	dnsResolveTimeout      = 5 * time.Second
	// peerDrainTimeout bounds how long a dropped peer's calls in flight may
	// take before its connection is closed.
	peerDrainTimeout = 5 * time.Second
	dnsScheme        = "dns:"
)

// Resolver maps the host and port of a dns: peer to the host:port addresses
// of its nodes. ResolveDNS is the default; tests pass their own.
type Resolver func(ctx context.Context, host string, port int) ([]string, error)

// ResolveDNS returns the addresses host resolves to now, as sorted host:port
// strings; a name that does not exist has none.
func ResolveDNS(ctx context.Context, host string, port int) ([]string, error) {
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return nil, nil
		}
		return nil, err
	}
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, net.JoinHostPort(ip.String(), strconv.Itoa(port)))
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// dnsTarget returns the host and port of a dns:HOST:PORT peer address; ok is
// false for a plain host:port.
func dnsTarget(address string) (host string, port int, ok bool, err error) {
	rest, found := strings.CutPrefix(address, dnsScheme)
	if !found {
		return "", 0, false, nil
	}
	if after, slashes := strings.CutPrefix(rest, "//"); slashes {
		authority, path, _ := strings.Cut(after, "/")
		if authority != "" {
			return "", 0, true, fmt.Errorf("%q: a DNS server in the address is not supported", address)
		}
		rest = path
	}
	i := strings.LastIndex(rest, ":")
	if i <= 0 {
		return "", 0, true, fmt.Errorf("a DNS peer must be dns:HOST:PORT, got %q", address)
	}
	host = strings.TrimSuffix(strings.TrimPrefix(rest[:i], "["), "]")
	port, err = strconv.Atoi(rest[i+1:])
	if host == "" || err != nil || port < 0 || port > 65535 {
		return "", 0, true, fmt.Errorf("a DNS peer must be dns:HOST:PORT, got %q", address)
	}
	return host, port, true, nil
}

// dnsGroup is the peers one dns: peer name resolved to, by address. Guarded
// by Node.mu.
type dnsGroup struct {
	name    string
	host    string
	port    int
	members map[string]*peer
}

// discoverPeers resolves every dns: peer name at once and then every
// PeerDNSInterval until the node stops.
func (n *Node) discoverPeers(ctx context.Context, groups []*dnsGroup) {
	defer n.peerWG.Done()
	tick := time.NewTicker(n.opts.PeerDNSInterval)
	defer tick.Stop()
	for {
		for _, g := range groups {
			n.resolveGroup(ctx, g)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (n *Node) resolveGroup(ctx context.Context, g *dnsGroup) {
	rctx, cancel := context.WithTimeout(ctx, dnsResolveTimeout)
	addresses, err := n.opts.Resolver(rctx, g.host, g.port)
	cancel()
	if ctx.Err() != nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err != nil {
		// A resolver failing must not stop discovery, nor drop a pool.
		n.log.Warn("resolving a dns: peer failed; keeping its addresses", "peer", g.name, "host", g.host, "addresses", len(g.members), "err", err)
		return
	}
	if n.stopping {
		return
	}
	resolved := map[string]bool{}
	for _, address := range addresses {
		resolved[address] = true
	}
	for _, address := range slices.Sorted(maps.Keys(resolved)) {
		if g.members[address] != nil {
			continue
		}
		p := n.peerAtLocked(address)
		if p == nil {
			p = n.addPeerLocked(g.name+"/"+address, address, false)
			if p == nil {
				continue
			}
			p.group = g.name
		} else if p.learned && p.group == "" {
			p.group = g.name // a learned peer the name now accounts for
		}
		g.members[address] = p
		n.log.Info("dns: peer added", "peer", g.name, "addr", address)
	}
	for address, p := range g.members {
		if resolved[address] {
			continue
		}
		delete(g.members, address)
		n.log.Info("dns: peer no longer resolves; dropping it", "peer", g.name, "addr", address)
		if p.group == g.name {
			n.removePeerLocked(p)
		}
	}
}

// peerAtLocked is the peer dialled at address, if any.
func (n *Node) peerAtLocked(address string) *peer {
	for _, p := range n.peers {
		if p.address == address {
			return p
		}
	}
	return nil
}
