package certs

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// serveTLS runs a TLS listener on loopback with m's TLSConfig that closes
// every connection after the handshake; it returns the address.
func serveTLS(t *testing.T, m *Manager) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_ = c.(*tls.Conn).Handshake()
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// handshake connects with SNI serverName (none when empty) trusting only
// roots, verifies the chain for verifyName, and returns the leaf.
func handshake(addr, serverName, verifyName string, roots *x509.CertPool) (*x509.Certificate, error) {
	conf := &tls.Config{ServerName: serverName, RootCAs: roots, NextProtos: []string{"h2", "http/1.1"}}
	if serverName == "" {
		conf.InsecureSkipVerify = true // verified by hand below: crypto/tls needs a name
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	st := c.ConnectionState()
	leaf := st.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range st.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: verifyName, Roots: roots, Intermediates: inter}); err != nil {
		return nil, err
	}
	return leaf, nil
}

func caPool(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	pemData, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		t.Fatalf("%s: no certificate", file)
	}
	return pool
}

func TestSelfSignedCAReusedAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	m1, err := New(t.Context(), Config{Mode: ModeSelfSigned}, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	caFile := m1.CAFile()
	if want := filepath.Join(dir, "ca", "ca.pem"); caFile != want {
		t.Fatalf("CAFile = %q, want %q", caFile, want)
	}
	first, _ := os.ReadFile(caFile)
	m1.Close()

	for name, want := range map[string]os.FileMode{"ca.pem": 0o644, "ca-key.pem": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, "ca", name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode = %v, want %v", name, got, want)
		}
	}
	ca, err := x509.ParseCertificate(mustPEM(t, first))
	if err != nil {
		t.Fatal(err)
	}
	if !ca.IsCA || ca.NotAfter.Sub(ca.NotBefore) < 9*365*24*time.Hour {
		t.Errorf("CA: IsCA=%v validity=%v, want a CA valid about ten years", ca.IsCA, ca.NotAfter.Sub(ca.NotBefore))
	}

	m2, err := New(t.Context(), Config{Mode: ModeSelfSigned}, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	second, _ := os.ReadFile(m2.CAFile())
	if !bytes.Equal(first, second) {
		t.Fatal("the CA certificate changed across a restart; users would have to trust a new one")
	}
	// A certificate issued after the restart still verifies with the CA file
	// written before it.
	if err := m2.SetHosts(t.Context(), []string{"app.example.test"}); err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, m2)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := handshake(addr, "app.example.test", "app.example.test", roots); err != nil {
		t.Fatalf("handshake after restart: %v", err)
	}
}

func TestSelfSignedCAWithoutKeyIsAnError(t *testing.T) {
	dir := t.TempDir()
	m, err := New(t.Context(), Config{Mode: ModeSelfSigned}, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if err := os.Remove(filepath.Join(dir, "ca", "ca-key.pem")); err != nil {
		t.Fatal(err)
	}
	if _, err := New(t.Context(), Config{Mode: ModeSelfSigned}, dir, Options{}); err == nil {
		t.Fatal("New succeeded with a CA certificate but no key; want an error instead of a silent new CA")
	}
}

func TestSelfSignedLeafPerHost(t *testing.T) {
	m, err := New(t.Context(), Config{Mode: ModeSelfSigned}, t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.SetHosts(t.Context(), []string{"localhost", "App.Example.test.", "*.apps.example.test", "10.1.2.3"}); err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, m)
	roots := caPool(t, m.CAFile())

	tests := []struct {
		name       string
		sni        string
		verifyName string
		wantSANs   []string
	}{
		{name: "exact host", sni: "app.example.test", verifyName: "app.example.test", wantSANs: []string{"app.example.test"}},
		{name: "SNI case and dot", sni: "APP.example.test", verifyName: "app.example.test", wantSANs: []string{"app.example.test"}},
		{name: "wildcard host", sni: "one.apps.example.test", verifyName: "one.apps.example.test", wantSANs: []string{"*.apps.example.test"}},
		{name: "other wildcard label", sni: "two.apps.example.test", verifyName: "two.apps.example.test", wantSANs: []string{"*.apps.example.test"}},
		{name: "localhost", sni: "localhost", verifyName: "localhost", wantSANs: []string{"localhost"}},
		{name: "no SNI gets the first host", sni: "", verifyName: "127.0.0.1", wantSANs: []string{"localhost"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leaf, err := handshake(addr, tc.sni, tc.verifyName, roots)
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if !equalStrings(leaf.DNSNames, tc.wantSANs) {
				t.Errorf("DNS SANs = %v, want %v", leaf.DNSNames, tc.wantSANs)
			}
			if d := leaf.NotAfter.Sub(leaf.NotBefore); d < 89*24*time.Hour || d > 91*24*time.Hour {
				t.Errorf("validity = %v, want about 90 days", d)
			}
		})
	}

	t.Run("IP host", func(t *testing.T) {
		c, err := m.getCertificate(&tls.ClientHelloInfo{ServerName: "10.1.2.3"})
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Leaf.IPAddresses) != 1 || !c.Leaf.IPAddresses[0].Equal(net.ParseIP("10.1.2.3")) {
			t.Errorf("IP SANs = %v, want [10.1.2.3]", c.Leaf.IPAddresses)
		}
	})

	for _, sni := range []string{"evil.example.test", "apps.example.test", "a.b.apps.example.test", "example.test"} {
		t.Run("refuses "+sni, func(t *testing.T) {
			if _, err := handshake(addr, sni, sni, roots); err == nil {
				t.Fatalf("handshake for %s succeeded; the local CA must only sign route hosts", sni)
			}
		})
	}
}

func TestSelfSignedHostsChangeOnReload(t *testing.T) {
	m, err := New(t.Context(), Config{Mode: ModeSelfSigned}, t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	addr := serveTLS(t, m)
	roots := caPool(t, m.CAFile())
	if _, err := handshake(addr, "a.example.test", "a.example.test", roots); err == nil {
		t.Fatal("handshake succeeded before any host was set")
	}
	if err := m.SetHosts(t.Context(), []string{"a.example.test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(addr, "a.example.test", "a.example.test", roots); err != nil {
		t.Fatalf("after SetHosts(a): %v", err)
	}
	if err := m.SetHosts(t.Context(), []string{"b.example.test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(addr, "a.example.test", "a.example.test", roots); err == nil {
		t.Fatal("a.example.test still served after it was removed")
	}
	if _, err := handshake(addr, "b.example.test", "b.example.test", roots); err != nil {
		t.Fatalf("after SetHosts(b): %v", err)
	}
	if err := m.SetHosts(t.Context(), []string{"bad/host"}); err == nil {
		t.Fatal("SetHosts accepted a malformed host")
	}
	if _, err := handshake(addr, "b.example.test", "b.example.test", roots); err != nil {
		t.Fatalf("a failed SetHosts must keep the previous hosts: %v", err)
	}
}

func TestSelfSignedLeafRenewedBeforeExpiry(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)}
	m, err := New(t.Context(), Config{Mode: ModeSelfSigned}, t.TempDir(), Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.SetHosts(t.Context(), []string{"app.example.test"}); err != nil {
		t.Fatal(err)
	}
	hello := &tls.ClientHelloInfo{ServerName: "app.example.test"}
	c1, err := m.getCertificate(hello)
	if err != nil {
		t.Fatal(err)
	}
	clock.Add(30 * 24 * time.Hour)
	c2, _ := m.getCertificate(hello)
	if c2 != c1 {
		t.Error("leaf re-issued after 30 days; want it cached until 30 days before expiry")
	}
	clock.Add(31 * 24 * time.Hour)
	c3, _ := m.getCertificate(hello)
	if c3 == c1 {
		t.Fatal("leaf not re-issued 29 days before expiry")
	}
	if !c3.Leaf.NotAfter.After(c1.Leaf.NotAfter) {
		t.Errorf("new leaf expires %v, want after %v", c3.Leaf.NotAfter, c1.Leaf.NotAfter)
	}
}

func TestSelfSignedLeafCacheIsCapped(t *testing.T) {
	m, err := New(t.Context(), Config{Mode: ModeSelfSigned}, t.TempDir(), Options{MaxLeaves: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	hosts := []string{"a.test", "b.test", "c.test", "d.test"}
	if err := m.SetHosts(t.Context(), hosts); err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if _, err := m.getCertificate(&tls.ClientHelloInfo{ServerName: h}); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(m.ca.leaves); got > 2 {
		t.Errorf("cached leaves = %d, want at most 2", got)
	}
}

func mustPEM(t *testing.T, data []byte) []byte {
	t.Helper()
	b, _ := pemDecode(data)
	if b == nil {
		t.Fatal("no PEM block")
	}
	return b
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func pemDecode(data []byte) ([]byte, []byte) {
	b, rest := pem.Decode(data)
	if b == nil {
		return nil, rest
	}
	return b.Bytes, rest
}
