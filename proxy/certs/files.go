package certs

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// fileCert is mode files: one certificate chain and key, re-read when
// either file's modification time or size changes (renewal tools such as
// certbot or cert-manager replace the files, often through a symlink, which
// os.Stat follows).
type fileCert struct {
	certFile, keyFile string
	log               *slog.Logger

	cur atomic.Pointer[tls.Certificate]

	mu     sync.Mutex // serializes reloads and guards the stamps
	stamps [2]fileStamp
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func newFileCert(certFile, keyFile string, log *slog.Logger) (*fileCert, error) {
	f := &fileCert{certFile: certFile, keyFile: keyFile, log: log}
	if _, err := f.reload(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *fileCert) current() *tls.Certificate { return f.cur.Load() }

// reload re-reads the files when they changed since the last successful
// read and reports whether a new certificate is being served. On error the
// previous certificate stays.
func (f *fileCert) reload() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var stamps [2]fileStamp
	for i, name := range []string{f.certFile, f.keyFile} {
		fi, err := os.Stat(name)
		if err != nil {
			return false, fmt.Errorf("certs: tls files: %w", err)
		}
		stamps[i] = fileStamp{fi.ModTime(), fi.Size()}
	}
	if f.cur.Load() != nil && stamps == f.stamps {
		return false, nil
	}
	c, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
	if err != nil {
		return false, fmt.Errorf("certs: loading %s and %s: %w", f.certFile, f.keyFile, err)
	}
	first := f.cur.Load() == nil
	f.cur.Store(&c)
	f.stamps = stamps
	if !first {
		f.log.Info("certs: loaded renewed certificate", "cert_file", f.certFile,
			"subject", c.Leaf.Subject.String(), "not_after", c.Leaf.NotAfter)
	}
	return true, nil
}

// warnUncovered logs the hosts the certificate is not valid for.
func (f *fileCert) warnUncovered(hosts []string) {
	leaf := f.current().Leaf
	var missing []string
	for _, h := range hosts {
		probe := h
		if strings.HasPrefix(h, "*.") {
			probe = "portcullis-probe" + h[1:]
		}
		if leaf.VerifyHostname(probe) != nil {
			missing = append(missing, h)
		}
	}
	if len(missing) > 0 {
		f.log.Warn("certs: the certificate in tls.cert_file does not cover these hosts; clients will refuse it for them",
			"cert_file", f.certFile, "hosts", missing, "certificate_names", leaf.DNSNames)
	}
}
