package replicas

import "hash/fnv"

// Owner returns which of members should run job: the member with the
// highest hash of (member, job), rendezvous (highest random weight)
// hashing. It is pure and the same in every process, so replicas that see
// the same members agree on every job's owner without talking; when a
// member leaves only its jobs move, each to the member that scored next
// for it. "" when members is empty.
func Owner(job string, members []string) string {
	best, bestWeight := "", uint64(0)
	for _, m := range members {
		w := weight(m, job)
		// Ties (all but impossible) go to the smaller name, so the
		// order of members never matters.
		if best == "" || w > bestWeight || (w == bestWeight && m < best) {
			best, bestWeight = m, w
		}
	}
	return best
}

// weight hashes member+"\x00"+job with FNV-1a 64, then mixes the result:
// FNV-1a alone changes only its low bits for names that differ in their
// last byte ("hub-0", "hub-1"), which would let one member win most jobs.
func weight(member, job string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(member))
	h.Write([]byte{0})
	h.Write([]byte(job))
	return mix64(h.Sum64())
}

// mix64 is the finaliser of MurmurHash3 (fmix64): every input bit flips
// each output bit with probability about one half.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
