// The sandbox node's kubelet API (sandbox/node.ts starts one per node): the two endpoints the API server proxies
// `kubectl exec` and `kubectl logs` to, over TLS with client certificates of one CA (the API server's kubelet
// client certificate; the serving certificate is made here from the same CA for the node's address).
//
//	/exec/{namespace}/{pod}/{container}?command=...&stdin=1&stdout=1&stderr=1
//	    The kubelet's own remotecommand server (k8s.io/kubelet/pkg/cri/streaming/remotecommand: SPDY v1-v4 and
//	    WebSocket up to v4; the API server turns kubectl's WebSocket v5 into SPDY; exit codes as the
//	    NonZeroExitCode status); the command runs in the pod's network namespace as the container's user, with its
//	    env (`ip netns exec NETNS [setpriv ...] CMD...`).
//	/containerLogs/{namespace}/{pod}/{container}?follow=&tailLines=&limitBytes=
//	    The container's log file as node.ts writes it.
//
// A pod is known by the file {pods}/{namespace}_{pod}/pod.json that node.ts writes: {"netns": NAME,
// "containers": {NAME: {"uid": N|null, "env": {K: V}, "cwd": DIR, "programs": {WORD: PATH}}}} (a command whose first
// word the image's programs name runs that program); its logs are {pods}/{namespace}_{pod}/logs/{container}.log.
// Left out: attach, port-forward, a TTY (refused with a message), `logs --previous`, timestamps and sinceSeconds. Bounds: at most --max-sessions exec and follow sessions at once (429 beyond),
// a session idle for --idle-timeout is closed, a pod.json over 1 MiB is refused.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"
	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/tools/remotecommand"
	server "k8s.io/kubelet/pkg/cri/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

type container struct {
	UID      *int              `json:"uid"`
	Env      map[string]string `json:"env"`
	Cwd      string            `json:"cwd"`
	Programs map[string]string `json:"programs"`
}

type pod struct {
	Netns      string               `json:"netns"`
	Containers map[string]container `json:"containers"`
}

var (
	podsDir  string
	idle     time.Duration
	sessions chan struct{}
	name     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)
)

// lookup reads a pod's file; the error is the answer's text (404).
func lookup(ns, podName, ctr string) (*pod, error) {
	if !name.MatchString(ns) || !name.MatchString(podName) || !name.MatchString(ctr) {
		return nil, fmt.Errorf("pod %s/%s container %s: not a valid name", ns, podName, ctr)
	}
	f, err := os.Open(filepath.Join(podsDir, ns+"_"+podName, "pod.json"))
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s is not running on this node", ns, podName)
	}
	defer f.Close()
	var p pod
	if err := json.NewDecoder(io.LimitReader(f, 1<<20)).Decode(&p); err != nil || p.Netns == "" {
		return nil, fmt.Errorf("pod %s/%s: its pod.json cannot be read: %v", ns, podName, err)
	}
	if _, ok := p.Containers[ctr]; !ok {
		return nil, fmt.Errorf("pod %s/%s has no container %q", ns, podName, ctr)
	}
	return &p, nil
}

// executor runs a command in the pod's network namespace.
type executor struct{ pod *pod }

func (e executor) ExecInContainer(ctx context.Context, _ string, _ types.UID, ctr string, cmd []string, in io.Reader, out, stderr io.WriteCloser, tty bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	if tty {
		return errors.New("the sandbox node has no terminals: run kubectl exec without -t")
	}
	if len(cmd) == 0 {
		return errors.New("no command given")
	}
	spec := e.pod.Containers[ctr]
	args := []string{"netns", "exec", e.pod.Netns}
	if spec.UID != nil {
		args = append(args, "setpriv", fmt.Sprintf("--reuid=%d", *spec.UID), fmt.Sprintf("--regid=%d", *spec.UID), "--clear-groups")
	}
	if program, ok := spec.Programs[cmd[0]]; ok {
		cmd = append([]string{program}, cmd[1:]...)
	}
	c := exec.Command("ip", append(args, cmd...)...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// As node.ts starts the container: this machine's environment, then the container's.
	c.Env = os.Environ()
	keys := make([]string, 0, len(spec.Env))
	for k := range spec.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		c.Env = append(c.Env, k+"="+spec.Env[k])
	}
	c.Dir = spec.Cwd
	if out != nil {
		c.Stdout = out
	}
	if stderr != nil {
		c.Stderr = stderr
	}
	var stdin io.WriteCloser
	if in != nil {
		var err error
		if stdin, err = c.StdinPipe(); err != nil {
			return err
		}
	}
	if err := c.Start(); err != nil {
		return err
	}
	if stdin != nil {
		// Not waited for: the client may never close its stdin, and the command's end ends the session.
		go func() { _, _ = io.Copy(stdin, in); stdin.Close() }()
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done(): // the client went away: the command and its children go too
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		case <-done:
		}
	}()
	err := c.Wait()
	close(done)
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return &utilexec.ExitErrorWrapper{ExitError: exitErr}
	}
	return err
}

// parts splits /{kind}/{ns}/{pod}/{container}.
func parts(w http.ResponseWriter, r *http.Request, kind string) (string, string, string, bool) {
	p := strings.Split(strings.TrimPrefix(r.URL.Path, "/"+kind+"/"), "/")
	if len(p) != 3 {
		http.Error(w, fmt.Sprintf("expected /%s/{namespace}/{pod}/{container}", kind), http.StatusNotFound)
		return "", "", "", false
	}
	return p[0], p[1], p[2], true
}

// session takes one of the bounded session slots, or answers 429.
func session(w http.ResponseWriter) (func(), bool) {
	select {
	case sessions <- struct{}{}:
		return func() { <-sessions }, true
	default:
		http.Error(w, fmt.Sprintf("too many sessions on this node (at most %d)", cap(sessions)), http.StatusTooManyRequests)
		return nil, false
	}
}

func serveExec(w http.ResponseWriter, r *http.Request) {
	ns, podName, ctr, ok := parts(w, r, "exec")
	if !ok {
		return
	}
	p, err := lookup(ns, podName, ctr)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	opts, err := server.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	release, ok := session(w)
	if !ok {
		return
	}
	defer release()
	server.ServeExec(w, r, executor{p}, podName, "", ctr, r.URL.Query()["command"], opts, idle, remotecommandconsts.DefaultStreamCreationTimeout, remotecommandconsts.SupportedStreamingProtocols)
}

func serveLogs(w http.ResponseWriter, r *http.Request) {
	ns, podName, ctr, ok := parts(w, r, "containerLogs")
	if !ok {
		return
	}
	if _, err := lookup(ns, podName, ctr); err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	num := func(k string) (int64, bool) {
		if q.Get(k) == "" {
			return -1, true
		}
		n, err := strconv.ParseInt(q.Get(k), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, fmt.Sprintf("%s=%q: not a count", k, q.Get(k)), http.StatusBadRequest)
			return 0, false
		}
		return n, true
	}
	tail, ok1 := num("tailLines")
	limit, ok2 := num("limitBytes")
	if !ok1 || !ok2 {
		return
	}
	if q.Get("previous") == "true" {
		http.Error(w, "the sandbox node keeps no logs of a previous container", http.StatusBadRequest)
		return
	}
	follow := q.Get("follow") == "true"
	if follow {
		release, ok := session(w)
		if !ok {
			return
		}
		defer release()
	}
	dir := filepath.Join(podsDir, ns+"_"+podName)
	f, err := os.Open(filepath.Join(dir, "logs", ctr+".log"))
	if err != nil {
		w.Header().Set("Content-Type", "text/plain")
		return // no output yet
	}
	defer f.Close()
	if tail >= 0 {
		seekTail(f, tail)
	}
	w.Header().Set("Content-Type", "text/plain")
	var dst io.Writer = w
	if limit >= 0 {
		dst = &limited{w, limit}
	}
	flusher, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	quiet := time.Duration(0)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			quiet = 0
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
			continue
		}
		if err != nil && err != io.EOF {
			return
		}
		if !follow {
			return
		}
		if _, serr := os.Stat(dir); serr != nil || quiet >= idle {
			return // the pod is gone, or nothing was written for the idle timeout
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(250 * time.Millisecond):
			quiet += 250 * time.Millisecond
		}
	}
}

// limited writes at most n bytes, then fails.
type limited struct {
	w io.Writer
	n int64
}

func (l *limited) Write(b []byte) (int, error) {
	if l.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.w.Write(b)
	l.n -= int64(n)
	return n, err
}

// seekTail places f at the start of its last `lines` lines.
func seekTail(f *os.File, lines int64) {
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil || lines == 0 {
		return
	}
	buf := make([]byte, 32<<10)
	pos, seen := end, int64(0)
	for pos > 0 {
		n := int64(len(buf))
		if pos < n {
			n = pos
		}
		pos -= n
		if _, err := f.ReadAt(buf[:n], pos); err != nil {
			break
		}
		for i := n - 1; i >= 0; i-- {
			if buf[i] == '\n' && pos+i != end-1 {
				if seen++; seen == lines {
					_, _ = f.Seek(pos+i+1, io.SeekStart)
					return
				}
			}
		}
	}
	_, _ = f.Seek(0, io.SeekStart)
}

// servingCert makes a certificate for the node's address, signed by the CA.
func servingCert(caCert, caKey string, ip net.IP) (tls.Certificate, *x509.CertPool, error) {
	ca, err := tls.LoadX509KeyPair(caCert, caKey)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("CA %s: %v", caCert, err)
	}
	caX509, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "sandbox-node-agent"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{ip},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caX509, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(caX509)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address:port to serve on (port 0: any)")
	flag.StringVar(&podsDir, "pods", "", "the folder of the pods' pod.json files (node.ts)")
	caCert := flag.String("ca-cert", "", "the CA (PEM) of the API server's kubelet client certificate; it signs the serving certificate")
	caKey := flag.String("ca-key", "", "the CA's key (PEM)")
	maxSessions := flag.Int("max-sessions", 64, "exec and follow sessions at once")
	flag.DurationVar(&idle, "idle-timeout", 30*time.Minute, "a session with no traffic for this long is closed")
	flag.Parse()
	fail := func(err error) { fmt.Fprintln(os.Stderr, "node-agent:", err); os.Exit(2) }
	if podsDir == "" || *caCert == "" || *caKey == "" {
		fail(errors.New("--pods, --ca-cert and --ca-key are required"))
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil || net.ParseIP(host) == nil {
		fail(fmt.Errorf("--listen %q: expected IP:PORT", *listen))
	}
	cert, pool, err := servingCert(*caCert, *caKey, net.ParseIP(host))
	if err != nil {
		fail(err)
	}
	sessions = make(chan struct{}, *maxSessions)
	mux := http.NewServeMux()
	mux.HandleFunc("/exec/", serveExec)
	mux.HandleFunc("/containerLogs/", serveLogs)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fail(err)
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12},
	}
	// Gone with the node: a test process that was killed leaves no agent behind.
	go func(parent int) {
		for range time.Tick(time.Second) {
			if os.Getppid() != parent {
				os.Exit(0)
			}
		}
	}(os.Getppid())
	// node.ts waits for this line to learn the port.
	fmt.Printf("listening on %s\n", ln.Addr())
	fail(srv.ServeTLS(ln, "", ""))
}
