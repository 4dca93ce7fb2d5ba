package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// certs are the PEM files of a throwaway CA, a server certificate for
// 127.0.0.1 and node.test, and a client certificate, all made in the test.
type certs struct {
	dir                                              string
	ca, serverCert, serverKey, clientCert, clientKey string
}

func makeCerts(t *testing.T) certs {
	t.Helper()
	dir := t.TempDir()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, kind string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	writeKey := func(name string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, "PRIVATE KEY", der)
	}
	now := time.Now()
	caKey := newKey()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ravi-go-test-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(serial int64, name string, usage x509.ExtKeyUsage, ips []net.IP, dns []string) ([]byte, *ecdsa.PrivateKey) {
		k := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  ips,
			DNSNames:     dns,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	serverDER, serverKey := leaf(2, "ravi-go-test-server", x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")}, []string{"node.test"})
	clientDER, clientKey := leaf(3, "ravi-go-test-client", x509.ExtKeyUsageClientAuth, nil, nil)
	return certs{
		dir:        dir,
		ca:         write("ca.pem", "CERTIFICATE", caDER),
		serverCert: write("server.pem", "CERTIFICATE", serverDER),
		serverKey:  writeKey("server.key", serverKey),
		clientCert: write("client.pem", "CERTIFICATE", clientDER),
		clientKey:  writeKey("client.key", clientKey),
	}
}

// healthStatus asks the node's grpc.health.v1 over creds.
func healthStatus(t *testing.T, addr string, creds credentials.TransportCredentials) (healthpb.HealthCheckResponse_ServingStatus, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return resp.GetStatus(), err
}

func TestNodeServesTLS(t *testing.T) {
	c := makeCerts(t)
	n := startNodeProcess(t, "tls-a", "--conformance-type", "conformance-go", "--tls-cert", c.serverCert, "--tls-key", c.serverKey)

	r := cli(t, "describe", "--addr", n.addr, "--tls-ca", c.ca)
	if info := decode(t, r.stdout); r.code != 0 || info["nodeId"] != "tls-a" {
		t.Fatalf("describe over TLS: %+v", r)
	}
	r = cli(t, "send", "--addr", n.addr, "--tls-ca", c.ca, "--to", "conformance-go/k", "--type", "ravi.conformance.v1.Echo", "--json", `{"text": "over TLS"}`)
	if echoed := resultValue(t, r.stdout); r.code != 0 || echoed["text"] != "over TLS" {
		t.Fatalf("send over TLS: %+v", r)
	}
	// A plaintext client cannot talk to a TLS listener.
	r = cli(t, "describe", "--addr", n.addr, "--timeout", "2s")
	if r.code != 1 || !strings.Contains(r.stderr, "UNAVAILABLE") {
		t.Fatalf("plaintext describe: %+v", r)
	}
	// A client that does not trust the CA is refused too (system roots).
	r = cli(t, "describe", "--addr", n.addr, "--tls-cert", c.clientCert, "--tls-key", c.clientKey, "--timeout", "2s")
	if r.code != 1 || !strings.Contains(r.stderr, "UNAVAILABLE") {
		t.Fatalf("untrusted describe: %+v", r)
	}

	// grpc.health.v1 is on the same TLS listener.
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(c.ca)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(caPEM)
	st, err := healthStatus(t, n.addr, credentials.NewTLS(&tls.Config{RootCAs: pool}))
	if err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health over TLS: %v %v", st, err)
	}
	if _, err := healthStatus(t, n.addr, insecure.NewCredentials()); err == nil {
		t.Fatal("plaintext health check succeeded on a TLS listener")
	}
	n.stop(t)
}

func TestNodeMutualTLS(t *testing.T) {
	c := makeCerts(t)
	n := startNodeProcess(t, "mtls-a", "--conformance-type", "conformance-go",
		"--tls-cert", c.serverCert, "--tls-key", c.serverKey, "--tls-client-ca", c.ca)
	withCert := []string{"--addr", n.addr, "--tls-ca", c.ca, "--tls-cert", c.clientCert, "--tls-key", c.clientKey}
	echo := []string{"send", "--to", "conformance-go/k", "--type", "ravi.conformance.v1.Echo", "--json", `{"text": "over mTLS"}`}

	r := cli(t, append(echo, withCert...)...)
	if echoed := resultValue(t, r.stdout); r.code != 0 || echoed["text"] != "over mTLS" {
		t.Fatalf("send with a client certificate: %+v", r)
	}
	// Without a client certificate the handshake is refused.
	r = cli(t, append(echo, "--addr", n.addr, "--tls-ca", c.ca, "--timeout", "2s")...)
	if r.code != 1 || !strings.Contains(r.stderr, "UNAVAILABLE") {
		t.Fatalf("send without a client certificate: %+v", r)
	}
	// A certificate the node's client CA did not sign is refused as well:
	// the server's own certificate is signed by the same CA, so use one from
	// another CA.
	other := makeCerts(t)
	r = cli(t, append(echo, "--addr", n.addr, "--tls-ca", c.ca, "--tls-cert", other.clientCert, "--tls-key", other.clientKey, "--timeout", "2s")...)
	if r.code != 1 || !strings.Contains(r.stderr, "UNAVAILABLE") {
		t.Fatalf("send with a foreign client certificate: %+v", r)
	}
	// The node keeps serving those that have one.
	r = cli(t, append([]string{"describe"}, withCert...)...)
	if r.code != 0 || decode(t, r.stdout)["nodeId"] != "mtls-a" {
		t.Fatalf("describe after refusals: %+v", r)
	}
	n.stop(t)
}

func TestNodeDialsPeersWithMutualTLS(t *testing.T) {
	c := makeCerts(t)
	a := startNodeProcess(t, "mtls-a", "--conformance-type", "conformance-a",
		"--tls-cert", c.serverCert, "--tls-key", c.serverKey, "--tls-client-ca", c.ca)
	// b serves plaintext and dials a with TLS, presenting its certificate and
	// expecting a's certificate to carry node.test (it is dialled by IP).
	b := startNodeProcess(t, "peer-b", "--conformance-type", "conformance-b", "--peer", "a="+a.addr,
		"--peer-tls-ca", c.ca, "--peer-tls-cert", c.clientCert, "--peer-tls-key", c.clientKey,
		"--peer-tls-server-name", "node.test")
	deadline := time.Now().Add(10 * time.Second)
	var r result
	for {
		r = cli(t, "send", "--addr", b.addr, "--to", "conformance-a/k", "--type", "ravi.conformance.v1.Echo", "--json", `{"text": "via b"}`)
		if r.code == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := decode(t, r.stdout)
	if echoed := resultValue(t, r.stdout); r.code != 0 || out["nodeId"] != "mtls-a" || echoed["text"] != "via b" {
		t.Fatalf("b -> a over mTLS: %+v", r)
	}
	b.stop(t)
	a.stop(t)
}

func TestTLSFlagErrors(t *testing.T) {
	c := makeCerts(t)
	garbage := filepath.Join(c.dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(c.dir, "missing.pem")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"node", "--tls-cert", c.serverCert}, 2, "--tls-cert and --tls-key go together"},
		{[]string{"node", "--tls-key", c.serverKey}, 2, "--tls-cert and --tls-key go together"},
		{[]string{"node", "--tls-client-ca", c.ca}, 2, "--tls-client-ca needs --tls-cert and --tls-key"},
		{[]string{"node", "--tls-cert", missing, "--tls-key", c.serverKey}, 2, "--tls-cert: open " + missing},
		{[]string{"node", "--tls-cert", c.serverCert, "--tls-key", missing}, 2, "--tls-key: open " + missing},
		{[]string{"node", "--tls-cert", garbage, "--tls-key", c.serverKey}, 2, "failed to find any PEM data"},
		{[]string{"node", "--tls-cert", c.serverCert, "--tls-key", c.clientKey}, 2, "private key does not match public key"},
		{[]string{"node", "--tls-cert", c.serverCert, "--tls-key", c.serverKey, "--tls-client-ca", garbage}, 2, "--tls-client-ca " + garbage + ": no PEM certificate"},
		{[]string{"node", "--peer-tls-ca", c.ca, "--peer-tls-cert", c.clientCert}, 2, "--peer-tls-cert and --peer-tls-key go together"},
		{[]string{"node", "--peer-tls-server-name", "node.test"}, 2, "--peer-tls-server-name needs --peer-tls-ca"},
		{[]string{"node", "--peer-tls-ca", missing}, 2, "--peer-tls-ca: open " + missing},
		{[]string{"describe", "--tls-ca", garbage}, 2, "--tls-ca " + garbage + ": no PEM certificate"},
		{[]string{"send", "--to", "a/b", "--type", "x", "--tls-ca", c.ca, "--tls-key", c.clientKey}, 2, "--tls-cert and --tls-key go together"},
		{[]string{"publish", "--topic", "a/b", "--type", "x", "--tls-ca", missing}, 2, "--tls-ca: open " + missing},
		{[]string{"subscribe", "--topic-type", "x", "--tls-server-name", "node.test"}, 2, "--tls-server-name needs --tls-ca"},
	} {
		// An unreadable or unusable file is a usage error, as in `ravi` and `ravi-node`.
		r := cli(t, tc.args...)
		lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
		if r.code != tc.code || len(lines) != 1 || !strings.Contains(r.stderr, tc.want) || !strings.HasPrefix(r.stderr, "ravi-go "+tc.args[0]+": ") {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and one line with %q", tc.args, r.code, r.stderr, tc.code, tc.want)
		}
	}
}
