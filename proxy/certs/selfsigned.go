package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	leafLifetime = 90 * 24 * time.Hour
	// leafRenewBefore is how long before expiry a cached leaf is replaced.
	leafRenewBefore = 30 * 24 * time.Hour
	// backdate covers clients whose clock is a little behind.
	backdate = time.Hour

	caCertName = "ca.pem"
	caKeyName  = "ca-key.pem"
)

func caDir(dataDir string) string { return filepath.Join(dataDir, "ca") }

// localCA is the self-signed mode's certificate authority. It only signs
// names the Manager was told about, so trusting its certificate does not let
// anyone who can reach the listener obtain certificates for other names.
type localCA struct {
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	certFile string
	clock    Clock
	max      int

	mu     sync.Mutex
	leaves map[string]*tls.Certificate // by host pattern
}

// loadOrCreateCA loads ca.pem and ca-key.pem from dir, or creates them
// (ECDSA P-256, valid ten years) when neither exists. A key without its
// certificate (an interrupted creation) is replaced; a certificate without
// its key is an error, since replacing it would silently invalidate the
// trust users placed in it.
func loadOrCreateCA(dir string, clock Clock, maxLeaves int, log *slog.Logger) (*localCA, error) {
	ca := &localCA{certFile: filepath.Join(dir, caCertName), clock: clock, max: maxLeaves, leaves: map[string]*tls.Certificate{}}
	keyFile := filepath.Join(dir, caKeyName)
	certPEM, cerr := os.ReadFile(ca.certFile)
	keyPEM, kerr := os.ReadFile(keyFile)
	switch {
	case cerr == nil && kerr == nil:
		if err := ca.parse(certPEM, keyPEM); err != nil {
			return nil, fmt.Errorf("certs: local CA in %s: %w", dir, err)
		}
		if now := clock.Now(); now.After(ca.cert.NotAfter) {
			return nil, fmt.Errorf("certs: local CA %s expired on %s: remove %s and %s to create a new one (and trust the new one)",
				ca.certFile, ca.cert.NotAfter.Format(time.DateOnly), ca.certFile, keyFile)
		}
		return ca, nil
	case cerr == nil && errors.Is(kerr, fs.ErrNotExist):
		return nil, fmt.Errorf("certs: local CA certificate %s has no key %s: restore the key, or remove the certificate to create a new CA", ca.certFile, keyFile)
	case cerr != nil && !errors.Is(cerr, fs.ErrNotExist):
		return nil, fmt.Errorf("certs: reading local CA: %w", cerr)
	case kerr != nil && !errors.Is(kerr, fs.ErrNotExist):
		return nil, fmt.Errorf("certs: reading local CA key: %w", kerr)
	}
	if err := ca.create(dir, keyFile); err != nil {
		return nil, err
	}
	log.Info("certs: created a local CA; trust it to avoid browser warnings", "ca_file", ca.certFile)
	return ca, nil
}

func (ca *localCA) parse(certPEM, keyPEM []byte) error {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return errors.New("ca.pem holds no PEM certificate")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return fmt.Errorf("ca.pem: %w", err)
	}
	if !cert.IsCA {
		return errors.New("ca.pem is not a CA certificate")
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return errors.New("ca-key.pem holds no PEM key")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return fmt.Errorf("ca-key.pem: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return errors.New("ca-key.pem does not match ca.pem")
	}
	ca.cert, ca.key = cert, key
	return nil
}

func (ca *localCA) create(dir, keyFile string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("certs: creating %s: %w", dir, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("certs: generating CA key: %w", err)
	}
	now := ca.clock.Now()
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"Portcullis"}, CommonName: "Portcullis local CA " + host},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("certs: creating CA certificate: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("certs: encoding CA key: %w", err)
	}
	// The key goes first: a crash in between leaves a key without a
	// certificate, which the next start replaces.
	if err := writeFileAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		return err
	}
	if err := writeFileAtomic(ca.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("certs: parsing new CA certificate: %w", err)
	}
	ca.cert, ca.key = cert, key
	return nil
}

// leaf returns a certificate for a host pattern ("app.example.com",
// "*.example.com", "localhost", "10.0.0.1"), issuing one when none is cached
// or the cached one is within leafRenewBefore of expiry.
func (ca *localCA) leaf(pattern string) (*tls.Certificate, error) {
	now := ca.clock.Now()
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if c, ok := ca.leaves[pattern]; ok && now.Before(c.Leaf.NotAfter.Add(-leafRenewBefore)) && !now.Before(c.Leaf.NotBefore) {
		return c, nil
	}
	c, err := ca.issue(pattern, now)
	if err != nil {
		return nil, err
	}
	if _, ok := ca.leaves[pattern]; !ok && len(ca.leaves) >= ca.max {
		for k := range ca.leaves { // evict one; they are cheap to re-issue
			delete(ca.leaves, k)
			break
		}
	}
	ca.leaves[pattern] = c
	return c, nil
}

func (ca *localCA) issue(pattern string, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: generating key for %s: %w", pattern, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: pattern},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(leafLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	if ip := net.ParseIP(pattern); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{pattern}
	}
	if pattern == "localhost" || strings.HasSuffix(pattern, ".localhost") {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IPv4(127, 0, 0, 1), net.IPv6loopback)
		if pattern != "localhost" {
			tmpl.DNSNames = append(tmpl.DNSNames, "localhost")
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("certs: issuing certificate for %s: %w", pattern, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certs: parsing certificate for %s: %w", pattern, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// forgetExcept drops cached leaves for hosts no longer served.
func (ca *localCA) forgetExcept(hs *hostSet) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	for p := range ca.leaves {
		if !hs.exact[p] && !hs.wild[p] {
			delete(ca.leaves, p)
		}
	}
}

// randomSerial returns a positive 127-bit serial number.
func randomSerial() *big.Int {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it crashes the program instead)
	b[0] = b[0]&0x7f | 0x40
	return new(big.Int).SetBytes(b[:])
}

// writeFileAtomic writes data to a temporary file in the same directory and
// renames it over name, so readers never see a partial file.
func writeFileAtomic(name string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("certs: writing %s: %w", name, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("certs: writing %s: %w", name, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("certs: writing %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("certs: writing %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("certs: writing %s: %w", name, err)
	}
	if err := os.Rename(tmp, name); err != nil {
		return fmt.Errorf("certs: writing %s: %w", name, err)
	}
	return nil
}
