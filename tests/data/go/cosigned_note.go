// Command cosigned_note checks a cosigned checkpoint with golang.org/x/mod/sumdb/note,
// an implementation of C2SP signed notes that this project did not write.
//
// Usage: cosigned_note <log verifier key> <witness verifier key> <note file>
//
// The log's Ed25519 signature is checked by note.NewVerifier; the witness's
// cosignature/v1 (C2SP tlog-cosignature) by the small Verifier below, written from
// the spec: key ID SHA-256(name || "\n" || 0x04 || key)[:4], signature
// u64 big-endian timestamp || Ed25519 over "cosignature/v1\ntime <t>\n" || note text.
// Prints "ok <origin> <size> <timestamp>" and exits 0, or prints the error and exits 1.
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

type cosigV1 struct {
	name string
	hash uint32
	key  ed25519.PublicKey
	time uint64
}

func (v *cosigV1) Name() string    { return v.name }
func (v *cosigV1) KeyHash() uint32 { return v.hash }

func (v *cosigV1) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig[:8])
	var signed bytes.Buffer
	fmt.Fprintf(&signed, "cosignature/v1\ntime %d\n", t)
	signed.Write(msg)
	if !ed25519.Verify(v.key, signed.Bytes(), sig[8:]) {
		return false
	}
	v.time = t
	return true
}

func witnessVerifier(vkey string) (*cosigV1, error) {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("malformed witness key")
	}
	key, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(key) != 33 || key[0] != 0x04 {
		return nil, fmt.Errorf("witness key is not 0x04 || Ed25519 key")
	}
	h := sha256.New()
	h.Write([]byte(parts[0] + "\n"))
	h.Write(key)
	sum := h.Sum(nil)
	hash := binary.BigEndian.Uint32(sum[:4])
	if fmt.Sprintf("%08x", hash) != parts[1] {
		return nil, fmt.Errorf("witness key hash mismatch")
	}
	return &cosigV1{name: parts[0], hash: hash, key: ed25519.PublicKey(key[1:])}, nil
}

func main() {
	if len(os.Args) != 4 {
		fmt.Println("usage: cosigned_note LOGKEY WITNESSKEY NOTEFILE")
		os.Exit(2)
	}
	logV, err := note.NewVerifier(os.Args[1])
	if err != nil {
		fmt.Println("log key:", err)
		os.Exit(1)
	}
	witV, err := witnessVerifier(os.Args[2])
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	msg, err := os.ReadFile(os.Args[3])
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	n, err := note.Open(msg, note.VerifierList(logV, witV))
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	names := map[string]bool{}
	for _, s := range n.Sigs {
		names[s.Name] = true
	}
	if !names[logV.Name()] || !names[witV.Name()] || witV.time == 0 {
		fmt.Println("missing a signature: log", names[logV.Name()], "witness", names[witV.Name()])
		os.Exit(1)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 3 {
		fmt.Println("not a checkpoint")
		os.Exit(1)
	}
	if _, err := strconv.ParseUint(lines[1], 10, 64); err != nil {
		fmt.Println("bad size:", err)
		os.Exit(1)
	}
	fmt.Printf("ok %s %s %d\n", lines[0], lines[1], witV.time)
}
