// minicni drives a CNI network list through libcni, the library container runtimes
// (podman, containerd, CRI-O, kubelet's dockershim) link: the oracle of the CNI tests in
// tests/tests/cni_runtimes.rs (shared/reference/cni-dhcpv6.md Appendix D). Like cnitool:
//
//	minicni add|check|del|validate NETWORK NETNS CONTAINER_ID IFNAME
//
// NETCONFPATH is the directory of conflists, CNI_PATH the plugin directories, CNI_CACHE_DIR
// libcni's result cache and CNI_ARGS "K=V;K=V" pairs, which go to RuntimeConf.Args as kubelet
// passes K8S_POD_NAME and K8S_POD_NAMESPACE. ADD prints the result converted to a 1.0.0
// result (types100), so a result libcni cannot read fails here. VALIDATE asks each plugin
// VERSION and checks the list's version against what it answers, as podman does first.
//
// Built in GOPATH mode against Debian's golang-github-appc-cni-dev:
//
//	GO111MODULE=off GOPATH=$TMP/gopath:/usr/share/gocode go build -o minicni minicni
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "minicni: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 6 {
		fail("usage: minicni add|check|del|validate NETWORK NETNS CONTAINER_ID IFNAME")
	}
	verb, network := os.Args[1], os.Args[2]
	confDir := os.Getenv("NETCONFPATH")
	if confDir == "" {
		confDir = "/etc/cni/net.d"
	}
	list, err := libcni.LoadConfList(confDir, network)
	if err != nil {
		fail("loading %s from %s: %v", network, confDir, err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), os.Getenv("CNI_CACHE_DIR"), nil)
	rt := &libcni.RuntimeConf{ContainerID: os.Args[4], NetNS: os.Args[3], IfName: os.Args[5]}
	if args := os.Getenv("CNI_ARGS"); args != "" {
		for _, pair := range strings.Split(args, ";") {
			kv := strings.SplitN(pair, "=", 2)
			if len(kv) != 2 {
				fail("CNI_ARGS: %q is not K=V", pair)
			}
			rt.Args = append(rt.Args, [2]string{kv[0], kv[1]})
		}
	}
	ctx := context.Background()
	switch verb {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail("ADD: %v", err)
		}
		converted, err := types100.GetResult(result)
		if err != nil {
			fail("ADD result is no types100.Result: %v", err)
		}
		out, err := json.Marshal(converted)
		if err != nil {
			fail("ADD result: %v", err)
		}
		fmt.Println(string(out))
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail("CHECK: %v", err)
		}
		fmt.Println("CHECK ok")
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail("DEL: %v", err)
		}
		fmt.Println("DEL ok")
	case "validate":
		if _, err := cni.ValidateNetworkList(ctx, list); err != nil {
			fail("VALIDATE: %v", err)
		}
		fmt.Println("VALIDATE ok")
	default:
		fail("unknown verb %q", verb)
	}
}
