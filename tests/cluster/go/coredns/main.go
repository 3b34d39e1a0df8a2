// Command coredns is CoreDNS with only the plugins the kubevirt-spawner test
// cluster's Corefile uses (a cluster DNS server answering for
// cluster.local from the API server, nothing forwarded upstream), instead of
// CoreDNS's full plugin list with its cloud-provider SDKs: the same
// coremain, a fraction of the build.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// The plugin chain runs in this order; it is CoreDNS's own order
	// (core/dnsserver/zdirectives.go) restricted to the plugins above.
	dnsserver.Directives = []string{
		"bind", "ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes",
	}
}

func main() {
	coremain.Run()
}
