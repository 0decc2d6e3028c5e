package policy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// reloadDebounce is how long the directory must stay quiet before a change
// is compiled: editors and deploy tools write several files (or a temporary
// file and a rename) for one logical change.
const reloadDebounce = 150 * time.Millisecond

// Run watches the policy directory and its subdirectories (new ones
// included) and calls Reload after each burst of changes, until ctx ends.
// Writes in place, editors' write-then-rename saves and symlink swaps (as in
// Kubernetes ConfigMap volumes) are all seen, because whole directories are
// watched rather than files. A failed reload keeps the previous set and does
// not stop Run; Run returns nil when ctx ends and an error only when the
// directory cannot be watched at all.
func (e *Engine) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policy: watch %s: %w", e.cfg.Dir, err)
	}
	defer w.Close()
	if err := addTree(w, e.cfg.Dir); err != nil {
		return fmt.Errorf("policy: watch %s: %w", e.cfg.Dir, err)
	}
	e.log.Debug("policy: watching for changes", "dir", e.cfg.Dir)

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Has(fsnotify.Create) {
				if info, err := os.Stat(ev.Name); err == nil && info.IsDir() && !hidden(ev.Name) {
					// A new subdirectory: watch it and whatever it already holds.
					if err := addTree(w, ev.Name); err != nil {
						e.log.Warn("policy: cannot watch new directory", "dir", ev.Name, "err", err)
					}
				}
			}
			if ev.Op == fsnotify.Chmod {
				continue // attribute changes do not change what is served
			}
			timer.Reset(reloadDebounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// Overflow and similar: events may be lost, so reload to be sure.
			e.log.Warn("policy: file watcher error; reloading to be safe", "dir", e.cfg.Dir, "err", err)
			timer.Reset(reloadDebounce)
		case <-timer.C:
			// Reload logs and counts its own failures.
			_ = e.Reload(ctx)
		}
	}
}

// addTree watches root and every directory below it except hidden ones,
// which Load skips too.
func addTree(w *fsnotify.Watcher, root string) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path != root && errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if path != root && hidden(path) {
			return filepath.SkipDir
		}
		return w.Add(path)
	})
}

func hidden(path string) bool {
	name := filepath.Base(path)
	return strings.HasPrefix(name, ".") || strings.HasPrefix(name, "#")
}
