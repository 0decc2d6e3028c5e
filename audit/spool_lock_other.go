//go:build !unix

package audit

import (
	"fmt"
	"os"
	"path/filepath"
)

// lockFile: no advisory lock on this platform (see lockDir).
func lockFile(*os.File) error { return nil }

// lockDir opens dir/LOCK; on this platform there is no advisory lock, and
// keeping two processes off one spool is the operator's job.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: spool lock: %w", err)
	}
	return f, nil
}
