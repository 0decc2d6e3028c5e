// Package twogen is a bounded map for caches of values that are costly to
// compute and cheap to compute again: it keeps what was used lately and
// forgets the rest, without bookkeeping per entry.
//
// Entries live in two generations. Lookups check the newer map, then the
// older one, moving a hit into the newer; when the newer map is full it
// becomes the older one and the previous older one is dropped whole. At
// most the size given to New are held.
package twogen

import "sync"

// Map is safe for concurrent use.
type Map[V any] struct {
	mu       sync.Mutex
	half     int
	cur, old map[string]V
}

// New returns a Map holding at most size entries (at least 2).
func New[V any](size int) *Map[V] {
	half := max(size/2, 1)
	return &Map[V]{half: half, cur: make(map[string]V)}
}

// Get returns the value for key.
func (m *Map[V]) Get(key string) (V, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.cur[key]; ok {
		return v, true
	}
	v, ok := m.old[key]
	if ok {
		m.putLocked(key, v)
	}
	return v, ok
}

// GetBytes is Get for a key held as bytes, without converting it unless
// it is found in the older generation.
func (m *Map[V]) GetBytes(key []byte) (V, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.cur[string(key)]; ok {
		return v, true
	}
	v, ok := m.old[string(key)]
	if ok {
		m.putLocked(string(key), v)
	}
	return v, ok
}

// Put sets the value for key.
func (m *Map[V]) Put(key string, v V) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.putLocked(key, v)
}

func (m *Map[V]) putLocked(key string, v V) {
	if _, ok := m.cur[key]; !ok && len(m.cur) >= m.half {
		m.old, m.cur = m.cur, make(map[string]V, len(m.cur))
	}
	m.cur[key] = v
}

// Len is the number of entries held (an entry in both generations counts
// twice).
func (m *Map[V]) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.cur) + len(m.old)
}
