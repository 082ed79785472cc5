package gitremote

import "strings"

// CommitLength is the length of a commit name Drover pins: a full SHA-1 in
// hexadecimal. Repositories in Git's SHA-256 object format are refused by
// the hub when it resolves them (ErrObjectFormat), because the Git library
// both sides fetch with reads SHA-1 repositories only; the hub and every
// agent therefore agree that a commit is exactly this.
const CommitLength = 40

// zeroCommit is the all-zero object name, which Git uses for "no commit".
var zeroCommit = strings.Repeat("0", CommitLength)

// CheckCommit returns commit lower-cased if it is a full commit name
// (CommitLength hexadecimal characters, not all zero), or an error wrapping
// ErrInvalid that says what is wrong with it.
func CheckCommit(commit string) (string, error) {
	if len(commit) != CommitLength || !isHex(commit) {
		return "", invalidf("commit %q: must be a full %d-character hexadecimal SHA-1", commit, CommitLength)
	}
	sha := strings.ToLower(commit)
	if sha == zeroCommit {
		return "", invalidf("commit: the zero SHA is not a commit")
	}
	return sha, nil
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return s != ""
}
