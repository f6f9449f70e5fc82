package transfer

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// TLS names the files of a node's certificate and of the CA that signs
// every node's certificate (the CA of Nomad's own mTLS will do).
type TLS struct {
	CAFile, CertFile, KeyFile string
	// ServerName, when set, is a name every node's certificate carries
	// (e.g. "client.global.nomad" for Nomad's client certificates), and
	// the one checked; otherwise a node's certificate must name the
	// address it is reached at.
	ServerName string
}

// Configs returns the TLS configurations of the server and of the client.
// Both require a certificate signed by the CA from the peer. The node's
// certificate and key are read again when their files change, so that a
// renewed certificate applies without a restart.
func (t TLS) Configs() (server, client *tls.Config, err error) {
	pem, err := os.ReadFile(t.CAFile)
	if err != nil {
		return nil, nil, fmt.Errorf("ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("ca_file: %s holds no PEM certificate", t.CAFile)
	}
	kp := &keyPair{certFile: t.CertFile, keyFile: t.KeyFile}
	if _, err := kp.get(); err != nil {
		return nil, nil, err
	}
	server = &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  pool,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return kp.get()
		},
	}
	client = &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		ServerName: t.ServerName,
		NextProtos: []string{"http/1.1"},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return kp.get()
		},
	}
	return server, client, nil
}

// keyPair is a certificate and key read from files, read again when either
// file's modification time changes.
type keyPair struct {
	certFile, keyFile string

	mu       sync.Mutex
	cert     *tls.Certificate
	modified [2]time.Time
}

func (k *keyPair) get() (*tls.Certificate, error) {
	var mod [2]time.Time
	for i, f := range []string{k.certFile, k.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			field := "cert_file"
			if i == 1 {
				field = "key_file"
			}
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		mod[i] = fi.ModTime()
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cert != nil && mod == k.modified {
		return k.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		if k.cert != nil {
			// Caught between writing the two files: keep the last pair.
			return k.cert, nil
		}
		return nil, fmt.Errorf("cert_file, key_file: %w", err)
	}
	k.cert, k.modified = &cert, mod
	return k.cert, nil
}

// NewClient returns the HTTP client a driver talks to other drivers with:
// HTTP/1.1 over TLS with conf, never following redirects (a credential goes
// to the node it was made for, nowhere else), with buffers sized for
// streaming checkpoints.
func NewClient(conf *tls.Config) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     conf,
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   false,
		// Not nil: no HTTP/2, whose flow control slows one big stream.
		TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0,
		WriteBufferSize:       256 << 10,
		ReadBufferSize:        256 << 10,
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("redirects are not followed")
		},
	}
}
