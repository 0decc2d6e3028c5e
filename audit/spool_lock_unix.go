//go:build unix

package audit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockFile takes an exclusive advisory lock on f, so that two processes
// never append to one audit file (each would write over the other).
func lockFile(f *os.File) error {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("audit file %s is in use by another process (give each proxy its own audit.file.path)", f.Name())
		}
		return fmt.Errorf("audit file lock: %w", err)
	}
	return nil
}

// lockDir takes an exclusive advisory lock on dir/LOCK so that two
// processes never share a spool. The lock ends when the file is closed or
// the process exits.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: spool lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("audit: spool %s is in use by another process", dir)
		}
		return nil, fmt.Errorf("audit: spool lock: %w", err)
	}
	return f, nil
}
