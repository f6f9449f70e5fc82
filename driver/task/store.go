package task

import "sync"

// Store is the set of tasks a driver instance tracks, by Nomad task ID.
type Store struct {
	mu    sync.RWMutex
	tasks map[string]*Handle
}

// NewStore returns an empty store.
func NewStore() *Store { return &Store{tasks: map[string]*Handle{}} }

// Set records h under id.
func (s *Store) Set(id string, h *Handle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tasks[id] = h
}

// Get returns the handle of id.
func (s *Store) Get(id string) (*Handle, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h, ok := s.tasks[id]
	return h, ok
}

// Delete forgets id.
func (s *Store) Delete(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tasks, id)
}

// ContainerIDs lists the containers of all tracked tasks.
func (s *Store) ContainerIDs() map[string]bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := make(map[string]bool, len(s.tasks))
	for _, h := range s.tasks {
		ids[h.State.ContainerID] = true
	}
	return ids
}
