package main

// TLS flags, named and meaning as those of the Python "ravi node":
//
//	serving:          --tls-cert FILE --tls-key FILE [--tls-client-ca FILE]
//	dialling peers:   --peer-tls-ca FILE [--peer-tls-cert FILE --peer-tls-key FILE] [--peer-tls-server-name NAME]
//	client commands:  --tls-ca FILE [--tls-cert FILE --tls-key FILE] [--tls-server-name NAME]
//
// The credentials are google.golang.org/grpc/credentials over crypto/tls; the
// files are read and checked before anything is served or dialled, so a bad
// combination or file is a one-line error at startup.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// usageError is a wrong combination of flags: reported on one line, exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// serverTLSFlags are the serving side's: --tls-cert, --tls-key, --tls-client-ca.
type serverTLSFlags struct {
	cert, key, clientCA *string
}

func addServerTLSFlags(fs *flag.FlagSet) serverTLSFlags {
	return serverTLSFlags{
		cert:     fs.String("tls-cert", "", "serve TLS with this certificate (PEM; needs --tls-key)"),
		key:      fs.String("tls-key", "", "the TLS private key (PEM) of --tls-cert"),
		clientCA: fs.String("tls-client-ca", "", "require client certificates signed by this CA (PEM): mutual TLS; needs --tls-cert"),
	}
}

// serverOption is the grpc.Creds option serving TLS, or nil when no TLS flag
// was given (plaintext, as before).
func (f serverTLSFlags) serverOption() (grpc.ServerOption, error) {
	if *f.cert == "" && *f.key == "" && *f.clientCA == "" {
		return nil, nil
	}
	if *f.cert == "" || *f.key == "" {
		if *f.cert == "" && *f.key == "" {
			return nil, usageError{"--tls-client-ca needs --tls-cert and --tls-key"}
		}
		return nil, usageError{"--tls-cert and --tls-key go together: give both"}
	}
	pair, err := loadKeyPair("--tls-cert", *f.cert, "--tls-key", *f.key)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if *f.clientCA != "" {
		pool, err := loadCAs("--tls-client-ca", *f.clientCA)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return grpc.Creds(credentials.NewTLS(cfg)), nil
}

// dialTLSFlags are a calling side's: a CA to verify the server with, an
// optional client certificate, an optional server name. prefix is "peer-"
// for a node's peers, "" for the client commands.
type dialTLSFlags struct {
	prefix                    string
	ca, cert, key, serverName *string
}

func addPeerTLSFlags(fs *flag.FlagSet) dialTLSFlags {
	return dialTLSFlags{
		prefix:     "peer-",
		ca:         fs.String("peer-tls-ca", "", "dial peers with TLS, verifying them with this CA (PEM)"),
		cert:       fs.String("peer-tls-cert", "", "present this certificate (PEM) to peers that ask for one: mutual TLS; needs --peer-tls-key"),
		key:        fs.String("peer-tls-key", "", "the private key (PEM) of --peer-tls-cert"),
		serverName: fs.String("peer-tls-server-name", "", "the name peers' certificates must carry, when it is not the dialled host (peers dialled by IP)"),
	}
}

func addClientTLSFlags(fs *flag.FlagSet) dialTLSFlags {
	return dialTLSFlags{
		ca:         fs.String("tls-ca", "", "dial with TLS, verifying the node with this CA (PEM)"),
		cert:       fs.String("tls-cert", "", "present this client certificate (PEM) to a node that requires one; needs --tls-key"),
		key:        fs.String("tls-key", "", "the private key (PEM) of --tls-cert"),
		serverName: fs.String("tls-server-name", "", "the name the node's certificate must carry, when it is not the host of --addr"),
	}
}

// dialOption is the transport credentials dialling with TLS, or nil when no
// TLS flag was given (plaintext, as before). Any of the CA, certificate or
// key turns TLS on; without a CA the system's roots verify the server.
func (f dialTLSFlags) dialOption() (grpc.DialOption, error) {
	name := func(s string) string { return "--" + f.prefix + s }
	if *f.ca == "" && *f.cert == "" && *f.key == "" {
		if *f.serverName != "" {
			return nil, usageError{fmt.Sprintf("%s needs %s", name("tls-server-name"), name("tls-ca"))}
		}
		return nil, nil
	}
	if (*f.cert == "") != (*f.key == "") {
		return nil, usageError{fmt.Sprintf("%s and %s go together: give both", name("tls-cert"), name("tls-key"))}
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: *f.serverName}
	if *f.ca != "" {
		pool, err := loadCAs(name("tls-ca"), *f.ca)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if *f.cert != "" {
		pair, err := loadKeyPair(name("tls-cert"), *f.cert, name("tls-key"), *f.key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg)), nil
}

func loadKeyPair(certFlag, certFile, keyFlag, keyFile string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s: %w", certFlag, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s: %w", keyFlag, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s %s, %s %s: %w", certFlag, certFile, keyFlag, keyFile, err)
	}
	return pair, nil
}

func loadCAs(flagName, file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flagName, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s %s: no PEM certificate in the file", flagName, file)
	}
	return pool, nil
}

// isUsage tells a usageError.
func isUsage(err error) bool {
	var ue usageError
	return errors.As(err, &ue)
}
