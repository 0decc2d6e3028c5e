package twogen

import (
	"fmt"
	"sync"
	"testing"
)

// TestBounded: the map never holds more than its size, keeps what is used
// all the time, and forgets what was not used for a while.
func TestBounded(t *testing.T) {
	m := New[int](4)
	for i := range 100 {
		m.Put(fmt.Sprint("k", i), i)
		if v, ok := m.Get("k0"); !ok || v != 0 {
			t.Fatalf("after %d puts the constantly used k0 = %d, %v", i+1, v, ok)
		}
		if n := m.Len(); n > 4 {
			t.Fatalf("after %d puts the map holds %d entries, want at most 4", i+1, n)
		}
	}
	if _, ok := m.Get("k50"); ok {
		t.Fatal("k50 survived 49 newer entries in a map of 4")
	}
	if v, ok := m.GetBytes([]byte("k99")); !ok || v != 99 {
		t.Fatalf("newest entry = %d, %v", v, ok)
	}
	// Overwriting a key does not start a new generation.
	m.Put("k99", 100)
	if v, _ := m.Get("k99"); v != 100 {
		t.Fatalf("overwritten k99 = %d", v)
	}
}

func TestConcurrent(t *testing.T) {
	m := New[int](64)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				k := fmt.Sprint(g, ":", i%100)
				m.Put(k, i)
				if v, ok := m.GetBytes([]byte(k)); ok && v%100 != i%100 {
					t.Errorf("%s = %d", k, v)
					return
				}
			}
		}()
	}
	wg.Wait()
	if m.Len() > 64 {
		t.Fatalf("holds %d, want at most 64", m.Len())
	}
}
