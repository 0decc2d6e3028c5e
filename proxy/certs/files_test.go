package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testPKI is a CA that signs certificates written to files, as an outside
// tool (certbot, cert-manager) would.
type testPKI struct {
	ca    *x509.Certificate
	key   *ecdsa.PrivateKey
	pool  *x509.CertPool
	nextS int64
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "files test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{ca: ca, key: key, pool: pool, nextS: 2}
}

// write issues a certificate for names and writes cert and key PEM files.
func (p *testPKI) write(t *testing.T, certFile, keyFile string, names ...string) *big.Int {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial := big.NewInt(p.nextS)
	p.nextS++
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: names[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	k8, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k8}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return serial
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestFilesModeServesAndReloads(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	pki := newTestPKI(t)
	s1 := pki.write(t, certFile, keyFile, "*.example.test", "example.test")

	var logs syncBuffer
	m, err := New(t.Context(), Config{Mode: ModeFiles, CertFile: certFile, KeyFile: keyFile}, dir,
		Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), ReloadInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.CAFile() != "" {
		t.Errorf("CAFile = %q in files mode, want empty", m.CAFile())
	}
	if err := m.SetHosts(t.Context(), []string{"app.example.test", "*.example.test", "other.test"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "other.test") {
		t.Errorf("no warning about other.test, which the certificate does not cover; logs:\n%s", logs.String())
	}
	addr := serveTLS(t, m)
	leaf, err := handshake(addr, "app.example.test", "app.example.test", pki.pool)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if leaf.SerialNumber.Cmp(s1) != 0 {
		t.Fatalf("serial = %v, want %v", leaf.SerialNumber, s1)
	}

	// A renewal replaces the files; the ticker picks it up.
	time.Sleep(10 * time.Millisecond) // let the modification time move on coarse file systems
	s2 := pki.write(t, certFile, keyFile, "*.example.test", "example.test")
	deadline := time.Now().Add(5 * time.Second)
	for {
		leaf, err = handshake(addr, "app.example.test", "app.example.test", pki.pool)
		if err == nil && leaf.SerialNumber.Cmp(s2) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("renewed certificate not served within 5s (last serial %v, err %v)", leaf.SerialNumber, err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A broken replacement keeps the last good certificate.
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.SetHosts(t.Context(), []string{"app.example.test"}); err == nil {
		t.Error("SetHosts did not report the unreadable key")
	}
	leaf, err = handshake(addr, "app.example.test", "app.example.test", pki.pool)
	if err != nil || leaf.SerialNumber.Cmp(s2) != 0 {
		t.Fatalf("after a broken key file: serial %v err %v, want the previous certificate %v", leaf, err, s2)
	}
}

func TestFilesModeMissingFiles(t *testing.T) {
	dir := t.TempDir()
	_, err := New(t.Context(), Config{Mode: ModeFiles, CertFile: filepath.Join(dir, "none.crt"), KeyFile: filepath.Join(dir, "none.key")}, dir, Options{})
	if err == nil {
		t.Fatal("New succeeded without certificate files")
	}
	if !strings.Contains(err.Error(), "none.crt") {
		t.Errorf("error %q does not name the missing file", err)
	}
}
