// cnitool: a minimal CNI runtime for tests, built on Debian's libcni
// (golang-github-appc-cni-dev 1.1.2, which implements CNI spec up to 1.0.0).
//
//	cnitool add|check|del NETNAME NETNS
//	cnitool gc|status NETNAME [NETNS]
//
// Build offline (Debian 12, packages golang-go golang-github-appc-cni-dev):
//
//	GO111MODULE=off GOPATH=/tmp/gp:/usr/share/gocode GOCACHE=/tmp/gocache \
//	    go build -o /tmp/cnitool ./core/tests/cnitool
//
// The conflist named NETNAME is looked up (by its "name" field) in NETCONFPATH
// (default /etc/cni/net.d); plugins are found in CNI_PATH (colon-separated).
// Optional environment:
//
//	CNI_IFNAME       interface name (default eth0)
//	CNI_CONTAINERID  container id (default "cni-" + hex of sha512(NETNS)[:10], as upstream cnitool)
//	CNI_ARGS         "K=V;K=V" passed to the plugins as CNI_ARGS
//	CAP_ARGS         JSON object of capability args (e.g. {"ips":["10.99.0.50/24"]}),
//	                 given to plugins that declare the capability, in runtimeConfig
//	CNI_CACHE_DIR    libcni's result cache (default /var/lib/cni); set it in tests
//	CNI_VALID_ATTACHMENTS  for gc: "containerID/ifname,..." kept by GC (default: none)
//
// add prints the result JSON on stdout. On any failure the error is printed on
// stderr and the exit status is 1.
//
// libcni 1.1.2 has no GCNetworkList / GetStatusNetworkList (those are libcni >= 1.2,
// CNI spec 1.1). gc and status are therefore done here by hand, the way libcni 1.2
// does them: only for a conflist with cniVersion >= 1.1.0 (otherwise a no-op, as in
// libcni), each plugin is run with CNI_COMMAND=GC / STATUS and its config built from
// the list (name, cniVersion injected); GC also gets "cni.dev/valid-attachments" and
// "cni.dev/attachments". Note that libcni 1.1.2 itself cannot parse an ADD result
// of cniVersion 1.1.0, so add/check/del need a conflist with cniVersion <= 1.0.0.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage: %s add|check|del NETNAME NETNS\n       %s gc|status NETNAME [NETNS]\n",
		filepath.Base(os.Args[0]), filepath.Base(os.Args[0]))
	os.Exit(2)
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "cnitool: %v\n", err)
	os.Exit(1)
}

func parseArgs(s string) ([][2]string, error) {
	var out [][2]string
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ";") {
		p := strings.SplitN(kv, "=", 2)
		if len(p) != 2 {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q", kv)
		}
		out = append(out, [2]string{p[0], p[1]})
	}
	return out, nil
}

// versionAtLeast compares dotted numeric versions ("1.1.0" >= "1.1.0").
func versionAtLeast(v, min string) bool {
	a, b := strings.Split(v, "."), strings.Split(min, ".")
	for i := 0; i < 3; i++ {
		var x, y int
		if i < len(a) {
			x, _ = strconv.Atoi(a[i])
		}
		if i < len(b) {
			y, _ = strconv.Atoi(b[i])
		}
		if x != y {
			return x > y
		}
	}
	return true
}

// pluginConf builds one plugin's stdin from the list, as libcni does.
func pluginConf(list *libcni.NetworkConfigList, p *libcni.NetworkConfig, extra map[string]interface{}) ([]byte, error) {
	vals := map[string]interface{}{"name": list.Name, "cniVersion": list.CNIVersion}
	for k, v := range extra {
		vals[k] = v
	}
	c, err := libcni.InjectConf(p, vals)
	if err != nil {
		return nil, err
	}
	return c.Bytes, nil
}

func main() {
	if len(os.Args) < 3 {
		usage()
	}
	cmd, netName := os.Args[1], os.Args[2]
	netns := ""
	if len(os.Args) > 3 {
		netns = os.Args[3]
	}
	switch cmd {
	case "add", "check", "del":
		if netns == "" {
			usage()
		}
	case "gc", "status":
	default:
		usage()
	}

	confDir := os.Getenv("NETCONFPATH")
	if confDir == "" {
		confDir = "/etc/cni/net.d"
	}
	list, err := libcni.LoadConfList(confDir, netName)
	if err != nil {
		fail(err)
	}
	pluginArgs, err := parseArgs(os.Getenv("CNI_ARGS"))
	if err != nil {
		fail(err)
	}
	capArgs := map[string]interface{}{}
	if s := os.Getenv("CAP_ARGS"); s != "" {
		if err := json.Unmarshal([]byte(s), &capArgs); err != nil {
			fail(fmt.Errorf("parsing CAP_ARGS: %w", err))
		}
	}
	ifName := os.Getenv("CNI_IFNAME")
	if ifName == "" {
		ifName = "eth0"
	}
	containerID := os.Getenv("CNI_CONTAINERID")
	if containerID == "" {
		s := sha512.Sum512([]byte(netns))
		containerID = fmt.Sprintf("cni-%x", s[:10])
	}
	if netns != "" {
		if abs, err := filepath.Abs(netns); err == nil {
			netns = abs
		}
	}
	paths := filepath.SplitList(os.Getenv("CNI_PATH"))
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	cninet := libcni.NewCNIConfigWithCacheDir(paths, os.Getenv("CNI_CACHE_DIR"), exec)
	rt := &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         ifName,
		Args:           pluginArgs,
		CapabilityArgs: capArgs,
	}
	ctx := context.TODO()

	switch cmd {
	case "add":
		res, err := cninet.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := res.Print(); err != nil {
			fail(err)
		}
	case "check":
		if err := cninet.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cninet.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "gc", "status":
		if !versionAtLeast(list.CNIVersion, "1.1.0") {
			fmt.Fprintf(os.Stderr, "cnitool: %s skipped: conflist cniVersion %q < 1.1.0\n", cmd, list.CNIVersion)
			return
		}
		extra := map[string]interface{}{}
		if cmd == "gc" {
			atts := []map[string]string{}
			if s := os.Getenv("CNI_VALID_ATTACHMENTS"); s != "" {
				for _, a := range strings.Split(s, ",") {
					p := strings.SplitN(a, "/", 2)
					if len(p) != 2 {
						fail(fmt.Errorf("invalid CNI_VALID_ATTACHMENTS entry %q (want containerID/ifname)", a))
					}
					atts = append(atts, map[string]string{"containerID": p[0], "ifname": p[1]})
				}
			}
			extra["cni.dev/valid-attachments"] = atts
			extra["cni.dev/attachments"] = atts
		}
		var errs []string
		for _, p := range list.Plugins {
			conf, err := pluginConf(list, p, extra)
			if err != nil {
				fail(err)
			}
			path, err := exec.FindInPath(p.Network.Type, paths)
			if err != nil {
				fail(err)
			}
			args := &invoke.Args{Command: strings.ToUpper(cmd), Path: strings.Join(paths, ":")}
			if err := invoke.ExecPluginWithoutResult(ctx, path, conf, args, exec); err != nil {
				if cmd == "status" {
					fail(err) // STATUS stops at the first plugin that is not ready
				}
				errs = append(errs, err.Error()) // GC runs every plugin
			}
		}
		if len(errs) > 0 {
			fail(fmt.Errorf("%s", strings.Join(errs, "; ")))
		}
	}
}
