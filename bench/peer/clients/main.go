// The clients of the side-by-side benchmark (bench/peer.ts): N simulated Envoy sidecars, each with its own
// connection and one ADS stream (SotW or delta), against whichever server the driver points them at. Like
// Envoy, a client asks for clusters and listeners, then for the endpoints of its EDS clusters and the route
// configurations its listeners name, and ACKs every response at once. Written in Go so that the clients take
// as little of the machine's two cores from the server under test as possible.
//
// Protocol (stdin/stdout, one JSON object per line):
//
//	start: dials all N and prints {"ev":"synced","ms":X} when every stream holds all it asked for
//	{"cmd":"mark","expect":{"ns/sa":[[typeUrl,name],...]}} -> {"ok":"mark"}; later {"ev":"done","at":unixMs}
//	    once every stream has received, since the mark, each listed resource of its identity
//	{"cmd":"report"} -> {"ok":"report","bytes":B,"responses":R,"resources":K,"proxies":P} received since the mark (P: streams that got any)
//
// Churn (bench/churn.ts; nothing of it happens unless asked):
//
//	{"cmd":"churn","rate":R} -> {"ok":"churn"}: from now on R proxies a second, in turn, drop their connection and
//	    open a new one at once, starting over from nothing (a rollout's new pod); rate 0 stops
//	{"cmd":"times"} -> {"ok":"times","resync":[ms...],"acked":[unixMs...],"churned":K,"resyncing":U}: since the last
//	    "times", each new connection's time until it held all it asked for (ACKed), and, since the mark, when each
//	    stream that had something to wait for was done; K: connections dropped so far, U: new ones not yet synced.
//	    A stream reopened during a mark that expects something of it is done with it once it is synced and has
//	    received what it expects.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

const (
	prefix   = "type.googleapis.com/"
	cds      = prefix + "envoy.config.cluster.v3.Cluster"
	eds      = prefix + "envoy.config.endpoint.v3.ClusterLoadAssignment"
	lds      = prefix + "envoy.config.listener.v3.Listener"
	rds      = prefix + "envoy.config.route.v3.RouteConfiguration"
	hcmType  = prefix + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	edsValue = 3 // Cluster.DiscoveryType EDS
)

// fields calls fn for every length-delimited or varint field at the top level of b.
func fields(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, n uint64)) {
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return
		}
		b = b[l:]
		switch typ {
		case protowire.BytesType:
			v, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return
			}
			fn(num, typ, v, 0)
			b = b[l:]
		case protowire.VarintType:
			v, l := protowire.ConsumeVarint(b)
			if l < 0 {
				return
			}
			fn(num, typ, nil, v)
			b = b[l:]
		default:
			l := protowire.ConsumeFieldValue(num, typ, b)
			if l < 0 {
				return
			}
			b = b[l:]
		}
	}
}

// edsCluster: the name of a Cluster and whether its endpoints come over EDS (fields 1 and 2).
func edsCluster(b []byte) (name string, isEds bool) {
	fields(b, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) {
		if num == 1 && typ == protowire.BytesType {
			name = string(v)
		} else if num == 2 && typ == protowire.VarintType {
			isEds = n == edsValue
		}
	})
	return
}

// routeNames: the route configurations a Listener's HTTP connection managers name over RDS
// (Listener.filter_chains 3 / default_filter_chain 25 -> FilterChain.filters 3 -> Filter.typed_config 4 ->
// HttpConnectionManager.rds 3 -> Rds.route_config_name 2).
func routeNames(b []byte, out map[string]bool) {
	chain := func(c []byte) {
		fields(c, func(num protowire.Number, _ protowire.Type, f []byte, _ uint64) {
			if num != 3 {
				return
			}
			fields(f, func(num protowire.Number, _ protowire.Type, any []byte, _ uint64) {
				if num != 4 {
					return
				}
				var url string
				var value []byte
				fields(any, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) {
					if num == 1 {
						url = string(v)
					} else if num == 2 {
						value = v
					}
				})
				if url != hcmType {
					return
				}
				fields(value, func(num protowire.Number, _ protowire.Type, r []byte, _ uint64) {
					if num == 3 {
						fields(r, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) {
							if num == 2 {
								out[string(v)] = true
							}
						})
					}
				})
			})
		})
	}
	fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) {
		if (num == 3 || num == 25) && typ == protowire.BytesType {
			chain(v)
		}
	})
}

var (
	start   time.Time
	current atomic.Pointer[map[string][][2]string]
	bytes   atomic.Int64
	resps   atomic.Int64
	items   atomic.Int64
	updated atomic.Int64 // streams that received a response since the mark
	// Streams that ended and were opened again.
	reconnects atomic.Int64
	pending    atomic.Int64 // streams not yet synced, then streams not yet done with the current mark
	events     = make(chan map[string]any, 16)
	// Churn: the connections dropped, and what "times" reports.
	churned  atomic.Int64
	timesMu  sync.Mutex
	resyncMs []float64
	ackedAt  []float64
)

func unixMs() float64 { return float64(time.Now().UnixMicro()) / 1000 }

// proxy is one simulated sidecar's view of its stream.
type proxy struct {
	id       string
	have     map[string]map[string]bool // type -> names held (SotW: of the last response; delta: accumulated)
	want     map[string]map[string]bool // EDS and RDS names asked for
	got      map[string]bool            // types received at least once
	synced   bool
	missing  map[string]bool // "type name" still expected since the mark
	doneMark bool
	// When the stream was opened again by churn, until it is synced.
	resyncFrom time.Time
	updated    bool // received a response since the mark
	waited     bool // the mark expected something of it
	// What the held listeners ask for: each one's route configurations, and how many name each.
	listenerRoutes map[string]map[string]bool
	routeRefs      map[string]int
}

func newProxy(id string) *proxy {
	return &proxy{id: id, have: map[string]map[string]bool{}, want: map[string]map[string]bool{eds: {}, rds: {}}, got: map[string]bool{},
		doneMark: true, listenerRoutes: map[string]map[string]bool{}, routeRefs: map[string]int{}}
}

func (p *proxy) isSynced() bool {
	if !p.got[cds] || !p.got[lds] {
		return false
	}
	for _, t := range []string{eds, rds} {
		if len(p.want[t]) > 0 && !p.got[t] {
			return false
		}
		for n := range p.want[t] {
			if !p.have[t][n] {
				return false
			}
		}
	}
	return true
}

// received records a response's resources; returns the EDS or RDS names to subscribe to and unsubscribe from
// that follow from it. As in Envoy, what a response asks for is worked out from what it holds: a delta response
// of two listeners costs two listeners, not every listener the proxy holds (the clients must not be the limit of
// what is measured).
func (p *proxy) received(typ string, size int, names []string, bodies [][]byte, removed []string, replace bool) (wantType string, sub, unsub []string) {
	if current.Load() != nil {
		bytes.Add(int64(size))
		resps.Add(1)
		items.Add(int64(len(names)))
		if !p.updated {
			p.updated = true
			updated.Add(1)
		}
		for _, n := range names {
			delete(p.missing, typ+" "+n)
		}
	}
	p.got[typ] = true
	if replace || p.have[typ] == nil {
		p.have[typ] = map[string]bool{}
	}
	for _, n := range names {
		p.have[typ][n] = true
	}
	for _, n := range removed {
		delete(p.have[typ], n)
	}
	if replace && (typ == cds || typ == lds) {
		// State of the world: what the response does not hold is gone.
		for n := range p.held(typ) {
			if !p.have[typ][n] {
				removed = append(removed, n)
			}
		}
	}
	switch typ {
	case cds:
		wantType = eds
		want := p.want[eds]
		for i, b := range bodies {
			if _, isEds := edsCluster(b); isEds {
				if !want[names[i]] {
					want[names[i]] = true
					sub = append(sub, names[i])
				}
			} else if want[names[i]] {
				delete(want, names[i])
				unsub = append(unsub, names[i])
			}
		}
		for _, n := range removed {
			if want[n] {
				delete(want, n)
				unsub = append(unsub, n)
			}
		}
	case lds:
		wantType = rds
		want := p.want[rds]
		// A route configuration is asked for while some listener names it.
		release := func(routes map[string]bool) {
			for r := range routes {
				if p.routeRefs[r]--; p.routeRefs[r] == 0 {
					delete(p.routeRefs, r)
					delete(want, r)
					unsub = append(unsub, r)
				}
			}
		}
		for i, b := range bodies {
			routes := map[string]bool{}
			routeNames(b, routes)
			for r := range routes {
				if p.routeRefs[r]++; p.routeRefs[r] == 1 {
					want[r] = true
					sub = append(sub, r)
				}
			}
			release(p.listenerRoutes[names[i]])
			p.listenerRoutes[names[i]] = routes
		}
		for _, n := range removed {
			release(p.listenerRoutes[n])
			delete(p.listenerRoutes, n)
		}
	default:
		return "", nil, nil
	}
	// A name both dropped and taken again by the same response: no change.
	if len(sub) > 0 && len(unsub) > 0 {
		dropped := map[string]bool{}
		for _, n := range unsub {
			dropped[n] = true
		}
		twice := map[string]bool{}
		for _, n := range sub {
			if dropped[n] {
				twice[n] = true
			}
		}
		sub, unsub = without(sub, twice), without(unsub, twice)
	}
	if len(sub)+len(unsub) == 0 {
		wantType = ""
	}
	return
}

// held: the names a full-state type's response replaces (the clusters with EDS, the listeners).
func (p *proxy) held(typ string) map[string]bool {
	if typ == lds {
		out := make(map[string]bool, len(p.listenerRoutes))
		for n := range p.listenerRoutes {
			out[n] = true
		}
		return out
	}
	return p.want[eds]
}

func without(list []string, drop map[string]bool) (out []string) {
	for _, n := range list {
		if !drop[n] {
			out = append(out, n)
		}
	}
	return
}

// settle reports the stream synced (once) and done with the current mark (once per mark).
func (p *proxy) settle() {
	if !p.synced && p.isSynced() {
		p.synced = true
		if pending.Add(-1) == 0 {
			events <- map[string]any{"ev": "synced", "ms": float64(time.Since(start).Microseconds()) / 1000}
		}
	}
	if !p.resyncFrom.IsZero() && p.isSynced() {
		timesMu.Lock()
		resyncMs = append(resyncMs, float64(time.Since(p.resyncFrom).Microseconds())/1000)
		timesMu.Unlock()
		p.resyncFrom = time.Time{}
	}
	if !p.doneMark && len(p.missing) == 0 && (!p.waited || p.resyncFrom.IsZero()) {
		p.doneMark = true
		if p.waited {
			timesMu.Lock()
			ackedAt = append(ackedAt, unixMs())
			timesMu.Unlock()
		}
		if pending.Add(-1) == 0 {
			events <- map[string]any{"ev": "done", "at": float64(time.Now().UnixMicro()) / 1000}
		}
	}
}

// ended is the status a stream ended with when Send failed: Send returns io.EOF once the server has ended the stream,
// whatever the status; Recv returns the status itself. (Read as "ended with OK", this hid statuses under load.)
func ended[T any](recv func() (T, error), err error) error {
	if err != io.EOF {
		return err
	}
	for {
		if _, e := recv(); e != nil {
			return e
		}
	}
}

func nodeOf(i int, id string) *core.Node {
	ns, sa, _ := strings.Cut(id, "/")
	md, _ := structpb.NewStruct(map[string]any{"namespace": ns, "serviceAccount": sa})
	return &core.Node{Id: fmt.Sprintf("sidecar-%d~%s", i, id), Cluster: sa, UserAgentName: "envoy", Metadata: md}
}

func sotw(ctx context.Context, c discovery.AggregatedDiscoveryServiceClient, p *proxy, node *core.Node, lock *sync.Mutex, release func()) error {
	s, err := c.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := s.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: cds}); err != nil {
		return ended(s.Recv, err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{TypeUrl: lds}); err != nil {
		return ended(s.Recv, err)
	}
	version := map[string]string{}
	nonce := map[string]string{}
	for {
		r, err := s.Recv()
		if err != nil {
			return err
		}
		release()
		names := make([]string, len(r.Resources))
		bodies := make([][]byte, len(r.Resources))
		for i, a := range r.Resources {
			bodies[i] = a.Value
			names[i] = resourceName(r.TypeUrl, a.Value)
		}
		lock.Lock()
		wantType, _, _ := p.received(r.TypeUrl, proto.Size(r), names, bodies, nil, true)
		var want []string
		if wantType != "" {
			want = keys(p.want[wantType])
		}
		lock.Unlock()
		version[r.TypeUrl], nonce[r.TypeUrl] = r.VersionInfo, r.Nonce
		// ACK, with the names this type is asked for.
		ack := &discovery.DiscoveryRequest{TypeUrl: r.TypeUrl, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce}
		if r.TypeUrl == eds || r.TypeUrl == rds {
			ack.ResourceNames = keys(p.want[r.TypeUrl])
		}
		if err := s.Send(ack); err != nil {
			return ended(s.Recv, err)
		}
		if wantType != "" {
			if err := s.Send(&discovery.DiscoveryRequest{TypeUrl: wantType, ResourceNames: want, VersionInfo: version[wantType], ResponseNonce: nonce[wantType]}); err != nil {
				return ended(s.Recv, err)
			}
		}
		lock.Lock()
		p.settle()
		lock.Unlock()
	}
}

func delta(ctx context.Context, c discovery.AggregatedDiscoveryServiceClient, p *proxy, node *core.Node, lock *sync.Mutex, release func()) error {
	s, err := c.DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: cds}); err != nil {
		return ended(s.Recv, err)
	}
	if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: lds}); err != nil {
		return ended(s.Recv, err)
	}
	for {
		r, err := s.Recv()
		if err != nil {
			return err
		}
		release()
		names := make([]string, len(r.Resources))
		bodies := make([][]byte, len(r.Resources))
		for i, res := range r.Resources {
			names[i] = res.Name
			if res.Resource != nil {
				bodies[i] = res.Resource.Value
			}
		}
		lock.Lock()
		wantType, sub, unsub := p.received(r.TypeUrl, proto.Size(r), names, bodies, r.RemovedResources, false)
		lock.Unlock()
		if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
			return ended(s.Recv, err)
		}
		if len(sub)+len(unsub) > 0 {
			if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: wantType, ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub}); err != nil {
				return ended(s.Recv, err)
			}
		}
		lock.Lock()
		p.settle()
		lock.Unlock()
	}
}

// resourceName: field 1 of every resource type here is its name (Cluster, Listener, RouteConfiguration name;
// ClusterLoadAssignment cluster_name).
func resourceName(_ string, b []byte) (name string) {
	fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) {
		if num == 1 && typ == protowire.BytesType && name == "" {
			name = string(v)
		}
	})
	return
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func main() {
	addr := flag.String("addr", "", "server address")
	n := flag.Int("n", 2000, "proxies (one connection and one stream each)")
	mode := flag.String("mode", "sotw", "sotw or delta")
	ids := flag.String("identities", "", "comma-separated namespace/serviceAccount, given to proxies in turn")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the clients until the first report")
	dials := flag.Int("dials", 500, "streams being opened at once (until their first response)")
	window := flag.Int("window", 0, "HTTP/2 flow-control window per stream and per connection in bytes, fixed (0: gRPC's, which grows "+
		"with the bandwidth-delay product up to 16 MB a stream: 2,000 SotW streams of the big mesh then buffer more than 20 GB)")
	flag.Parse()
	// Fewer collections: the clients' memory is not what is measured, their CPU is taken from the server's.
	debug.SetGCPercent(400)
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			panic(err)
		}
		_ = pprof.StartCPUProfile(f)
	}
	identities := strings.Split(*ids, ",")
	out := json.NewEncoder(os.Stdout)
	go func() {
		for e := range events {
			_ = out.Encode(e)
		}
	}()

	ctx := context.Background()
	pending.Store(int64(*n))
	start = time.Now()
	proxies := make([]*proxy, *n)
	locks := make([]sync.Mutex, *n)
	// Churn: a proxy's connection is dropped when its channel is sent to.
	kicks := make([]chan struct{}, *n)
	for i := range kicks {
		kicks[i] = make(chan struct{}, 1)
	}
	// Lean connections: a load generator should leave the cores to the server under test.
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1 << 30)), grpc.WithSharedWriteBuffer(true),
		grpc.WithReadBufferSize(4096), grpc.WithWriteBufferSize(4096)}
	if *window > 0 {
		opts = append(opts, grpc.WithInitialWindowSize(int32(*window)), grpc.WithInitialConnWindowSize(int32(*window)))
	}
	dial := func() *grpc.ClientConn {
		conn, err := grpc.NewClient(*addr, opts...)
		if err != nil {
			panic(err)
		}
		return conn
	}
	sem := make(chan struct{}, *dials)
	go func() {
		for i := 0; i < *n; i++ {
			sem <- struct{}{}
			id := identities[i%len(identities)]
			proxies[i] = newProxy(id)
			conn := dial()
			// The dial slot is given back at the stream's first response, or when it fails.
			release := sync.OnceFunc(func() { <-sem })
			go func(i int) {
				c := discovery.NewAggregatedDiscoveryServiceClient(conn)
				run := sotw
				if *mode == "delta" {
					run = delta
				}
				// As Envoy: a stream that ends is opened again after a pause, and the proxy starts over
				// from nothing (the initial sync waits for it; a mark expects of it what it expected).
				for {
					sctx, cancel := context.WithCancel(ctx)
					var kicked atomic.Bool
					stop := make(chan struct{})
					go func() {
						select {
						case <-kicks[i]:
							kicked.Store(true)
							cancel()
						case <-stop:
						}
					}()
					err := run(sctx, c, proxies[i], nodeOf(i, id), &locks[i], release)
					close(stop)
					cancel()
					release()
					if kicked.Load() {
						// Churn: the old pod's connection goes, a new pod's is opened at once.
						_ = conn.Close()
						conn = dial()
						c = discovery.NewAggregatedDiscoveryServiceClient(conn)
						churned.Add(1)
					} else {
						if reconnects.Add(1) <= 10 {
							fmt.Fprintf(os.Stderr, "stream %d (%s) ended, opened again in 1 s: %v\n", i, id, err)
						}
						time.Sleep(time.Second)
					}
					locks[i].Lock()
					p := proxies[i]
					p.have, p.got = map[string]map[string]bool{}, map[string]bool{}
					p.want = map[string]map[string]bool{eds: {}, rds: {}}
					p.listenerRoutes, p.routeRefs = map[string]map[string]bool{}, map[string]int{}
					if kicked.Load() {
						p.resyncFrom = time.Now()
					}
					locks[i].Unlock()
				}
			}(i)
		}
	}()
	var stopChurn chan struct{}

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<30)
	for in.Scan() {
		var cmd struct {
			Cmd    string
			Expect map[string][][2]string
			Rate   int
		}
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			panic(err)
		}
		switch cmd.Cmd {
		case "mark":
			bytes.Store(0)
			resps.Store(0)
			items.Store(0)
			updated.Store(0)
			current.Store(&cmd.Expect)
			// Every stream expects its identity's list; those with nothing to wait for are done already.
			pending.Store(int64(*n) + 1)
			for i, p := range proxies {
				locks[i].Lock()
				p.missing = map[string]bool{}
				for _, e := range cmd.Expect[p.id] {
					p.missing[e[0]+" "+e[1]] = true
				}
				p.doneMark = false
				p.updated = false
				p.waited = len(p.missing) > 0
				p.settle()
				locks[i].Unlock()
			}
			timesMu.Lock()
			ackedAt = nil
			timesMu.Unlock()
			events <- map[string]any{"ok": "mark"}
			if pending.Add(-1) == 0 {
				events <- map[string]any{"ev": "done", "at": float64(time.Now().UnixMicro()) / 1000}
			}
		case "churn":
			if stopChurn != nil {
				close(stopChurn)
				stopChurn = nil
			}
			if cmd.Rate > 0 {
				stopChurn = make(chan struct{})
				go func(stop chan struct{}, every time.Duration) {
					t := time.NewTicker(every)
					defer t.Stop()
					for next := 0; ; next = (next + 1) % *n {
						select {
						case <-stop:
							return
						case <-t.C:
						}
						select {
						case kicks[next] <- struct{}{}:
						default:
						}
					}
				}(stopChurn, time.Second/time.Duration(cmd.Rate))
			}
			events <- map[string]any{"ok": "churn"}
		case "times":
			resyncing := 0
			for i, p := range proxies {
				locks[i].Lock()
				if p != nil && !p.resyncFrom.IsZero() {
					resyncing++
				}
				locks[i].Unlock()
			}
			timesMu.Lock()
			r, a := resyncMs, ackedAt
			resyncMs, ackedAt = nil, nil
			timesMu.Unlock()
			if r == nil {
				r = []float64{}
			}
			if a == nil {
				a = []float64{}
			}
			events <- map[string]any{"ok": "times", "resync": r, "acked": a, "churned": churned.Load(), "resyncing": resyncing}
		case "report":
			pprof.StopCPUProfile()
			events <- map[string]any{"ok": "report", "bytes": bytes.Load(), "responses": resps.Load(), "resources": items.Load(), "proxies": updated.Load(), "reconnects": reconnects.Load()}
		}
	}
}
