package pxe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// Pool hands out IPv4 addresses for full DHCP mode: static leases by MAC
// first, then the first free address of a range. It keeps leases in memory
// only; clients renew and keep their address as long as the server runs.
// Safe for concurrent use.
type Pool struct {
	mu        sync.Mutex
	start     uint32
	end       uint32
	next      uint32
	leaseTime time.Duration
	offerHold time.Duration
	static    map[string]net.IP // MAC -> address
	staticIPs map[uint32]bool
	leases    map[string]lease // MAC -> lease
	owner     map[uint32]string
	now       func() time.Time
}

type lease struct {
	ip      uint32
	expires time.Time
}

// NewPool serves addresses first..last inclusive.
func NewPool(first, last net.IP, leaseTime time.Duration) (*Pool, error) {
	a, b := ip4(first), ip4(last)
	if first.To4() == nil || last.To4() == nil || a > b {
		return nil, fmt.Errorf("pool %v-%v: not an IPv4 range", first, last)
	}
	if leaseTime <= 0 {
		leaseTime = time.Hour
	}
	return &Pool{
		start: a, end: b, next: a, leaseTime: leaseTime, offerHold: time.Minute,
		static: map[string]net.IP{}, staticIPs: map[uint32]bool{},
		leases: map[string]lease{}, owner: map[uint32]string{}, now: time.Now,
	}, nil
}

// ParsePool parses "10.0.0.100-10.0.0.200".
func ParsePool(s string, leaseTime time.Duration) (*Pool, error) {
	lo, hi, ok := strings.Cut(s, "-")
	a, b := net.ParseIP(strings.TrimSpace(lo)), net.ParseIP(strings.TrimSpace(hi))
	if !ok || a == nil || b == nil {
		return nil, fmt.Errorf("pool %q: want FIRST-LAST, e.g. 10.0.0.100-10.0.0.200", s)
	}
	return NewPool(a, b, leaseTime)
}

// AddStatic gives mac the fixed address ip (inside or outside the range).
func (p *Pool) AddStatic(mac net.HardwareAddr, ip net.IP) error {
	if ip.To4() == nil {
		return fmt.Errorf("static lease for %v: %v is not IPv4", mac, ip)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.static[mac.String()] = ip.To4()
	p.staticIPs[ip4(ip)] = true
	return nil
}

func ip4(ip net.IP) uint32 {
	v := ip.To4()
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func fromU32(v uint32) net.IP {
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, v)
	return ip
}

// ErrPoolFull means every address of the range is leased.
var ErrPoolFull = errors.New("address pool exhausted")

// Offer returns the address mac should get, holding it briefly for the
// REQUEST that follows. want is the client's requested address (option 50),
// honoured when free.
func (p *Pool) Offer(mac net.HardwareAddr, want net.IP) (net.IP, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := mac.String()
	if ip, ok := p.static[key]; ok {
		return ip, nil
	}
	now := p.now()
	if l, ok := p.leases[key]; ok {
		if l.expires.Before(now.Add(p.offerHold)) {
			l.expires = now.Add(p.offerHold)
			p.leases[key] = l
		}
		return fromU32(l.ip), nil
	}
	if w := ip4(want); w != 0 && p.freeLocked(w, now) {
		return p.takeLocked(key, w, now.Add(p.offerHold)), nil
	}
	n := p.end - p.start + 1
	for i := uint32(0); i < n; i++ {
		c := p.start + (p.next-p.start+i)%n
		if p.freeLocked(c, now) {
			p.next = p.start + (c-p.start+1)%n
			return p.takeLocked(key, c, now.Add(p.offerHold)), nil
		}
	}
	return nil, ErrPoolFull
}

func (p *Pool) freeLocked(v uint32, now time.Time) bool {
	if v < p.start || v > p.end || p.staticIPs[v] {
		return false
	}
	o, ok := p.owner[v]
	if !ok {
		return true
	}
	if l := p.leases[o]; l.expires.Before(now) {
		delete(p.leases, o)
		delete(p.owner, v)
		return true
	}
	return false
}

func (p *Pool) takeLocked(key string, v uint32, exp time.Time) net.IP {
	p.leases[key] = lease{ip: v, expires: exp}
	p.owner[v] = key
	return fromU32(v)
}

// Commit confirms mac's REQUEST for ip: true when ip is its static address
// or its offered/leased one (or a free address of the range, as after a
// server restart), and extends the lease.
func (p *Pool) Commit(mac net.HardwareAddr, ip net.IP) bool {
	if ip.To4() == nil || ip.IsUnspecified() {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	key := mac.String()
	if s, ok := p.static[key]; ok {
		return s.Equal(ip)
	}
	now := p.now()
	v := ip4(ip)
	if l, ok := p.leases[key]; ok && l.ip == v {
		p.leases[key] = lease{ip: v, expires: now.Add(p.leaseTime)}
		return true
	}
	if p.freeLocked(v, now) {
		if l, ok := p.leases[key]; ok {
			delete(p.owner, l.ip)
		}
		p.takeLocked(key, v, now.Add(p.leaseTime))
		return true
	}
	return false
}

// Release frees mac's dynamic lease.
func (p *Pool) Release(mac net.HardwareAddr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.leases[mac.String()]; ok {
		delete(p.owner, l.ip)
		delete(p.leases, mac.String())
	}
}
