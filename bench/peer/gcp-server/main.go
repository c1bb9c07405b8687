// The peer of the side-by-side benchmark (bench/peer.ts): go-control-plane's snapshot cache and ADS server,
// serving the resources mesh-xds builds for the same mesh. The driver writes them to files (per identity, one
// type's resources with its version); this program decodes them into Envoy's Go types once, up front, and on a
// command sets one snapshot per identity, the way a go-control-plane user publishes a translation.
//
// Protocol (stdin/stdout, one JSON object per line):
//
//	{"cmd":"load","tag":"T","file":"F"} -> {"ok":"load","identities":N}  decode F into snapshot set T
//	{"cmd":"apply","tag":"T"}           -> {"ok":"apply","ms":X}         SetSnapshot for every identity of T
//	{"cmd":"stop"}                       exits
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	// Every resource type the snapshots hold, registered for anypb.UnmarshalNew.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
)

// identity is the node hash: the proxy's namespace/serviceAccount from node.metadata, as mesh-xds keys them.
type identity struct{}

func (identity) ID(node *core.Node) string {
	f := node.GetMetadata().GetFields()
	return f["namespace"].GetStringValue() + "/" + f["serviceAccount"].GetStringValue()
}

// decoded shares one decoded message per distinct encoded resource across identities and snapshot sets,
// as a translation that builds a shared cluster once would.
var decoded = map[string]types.Resource{}

// load reads a file of records 'R' (a resource as a google.protobuf.Any, numbered in order) and 'S' (an
// identity, a type, its version and the numbers of its resources), as bench/peer.ts writes them.
func load(file string) (map[string]*cachev3.Snapshot, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	u32 := func() uint32 {
		var n uint32
		if err := binary.Read(r, binary.BigEndian, &n); err != nil {
			panic(err)
		}
		return n
	}
	bytes := func() []byte {
		b := make([]byte, u32())
		if _, err := io.ReadFull(r, b); err != nil {
			panic(err)
		}
		return b
	}
	var table []types.Resource
	out := map[string]*cachev3.Snapshot{}
	for {
		kind, err := r.ReadByte()
		if err == io.EOF {
			return out, nil
		}
		switch kind {
		case 'R':
			b := bytes()
			m, ok := decoded[string(b)]
			if !ok {
				var a anypb.Any
				if err := proto.Unmarshal(b, &a); err != nil {
					return nil, err
				}
				if m, err = a.UnmarshalNew(); err != nil {
					return nil, fmt.Errorf("%s: %w", a.TypeUrl, err)
				}
				decoded[string(b)] = m
			}
			table = append(table, m)
		case 'S':
			id, typeURL, version := string(bytes()), string(bytes()), string(bytes())
			items := make([]types.Resource, u32())
			for i := range items {
				items[i] = table[u32()]
			}
			snap := out[id]
			if snap == nil {
				snap = &cachev3.Snapshot{}
				out[id] = snap
			}
			snap.Resources[cachev3.GetResponseType(typeURL)] = cachev3.NewResources(version, items)
		default:
			return nil, fmt.Errorf("%s: bad record %q", file, kind)
		}
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	ctx := context.Background()
	cache := cachev3.NewSnapshotCache(true, identity{}, nil)
	srv := serverv3.NewServer(ctx, cache, nil)
	// As go-control-plane's own example server.
	g := grpc.NewServer(grpc.MaxConcurrentStreams(1000000))
	discovery.RegisterAggregatedDiscoveryServiceServer(g, srv)
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		panic(err)
	}
	go func() { _ = g.Serve(lis) }()

	out := json.NewEncoder(os.Stdout)
	_ = out.Encode(map[string]any{"ok": "listen", "port": lis.Addr().(*net.TCPAddr).Port, "pid": os.Getpid()})
	sets := map[string]map[string]*cachev3.Snapshot{}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var cmd struct{ Cmd, Tag, File string }
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			panic(err)
		}
		switch cmd.Cmd {
		case "load":
			set, err := load(cmd.File)
			if err != nil {
				panic(err)
			}
			sets[cmd.Tag] = set
			_ = out.Encode(map[string]any{"ok": "load", "identities": len(set)})
		case "apply":
			t := time.Now()
			for id, snap := range sets[cmd.Tag] {
				if err := cache.SetSnapshot(ctx, id, snap); err != nil {
					panic(err)
				}
			}
			delete(sets, cmd.Tag)
			_ = out.Encode(map[string]any{"ok": "apply", "ms": float64(time.Since(t).Microseconds()) / 1000})
		case "stop":
			os.Exit(0)
		}
	}
}
