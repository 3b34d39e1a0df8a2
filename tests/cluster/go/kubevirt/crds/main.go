// Command kubevirt-crds prints KubeVirt's CustomResourceDefinitions, with the
// OpenAPI validation schemas KubeVirt itself installs, as one JSON v1 List.
//
// The CRDs come from virt-operator's components package, the code virt-operator
// runs to install KubeVirt, so the test API server validates VirtualMachines
// exactly as a cluster running this KubeVirt release does.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	extv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"

	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
)

type crdFunc func() (*extv1.CustomResourceDefinition, error)

// The kinds the spawner and the test stand-in use, plus the ones a
// VirtualMachine's spec can refer to (instance types, preferences).
var generators = map[string]crdFunc{
	"vm":                  components.NewVirtualMachineCrd,
	"vmi":                 components.NewVirtualMachineInstanceCrd,
	"vmim":                components.NewVirtualMachineInstanceMigrationCrd,
	"vmirs":               components.NewReplicaSetCrd,
	"instancetype":        components.NewVirtualMachineInstancetypeCrd,
	"clusterinstancetype": components.NewVirtualMachineClusterInstancetypeCrd,
	"preference":          components.NewVirtualMachinePreferenceCrd,
	"clusterpreference":   components.NewVirtualMachineClusterPreferenceCrd,
}

func names() []string {
	out := make([]string, 0, len(generators))
	for k := range generators {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func main() {
	kinds := flag.String("kinds", strings.Join(names(), ","),
		"comma-separated CRDs to print; one of: "+strings.Join(names(), ", "))
	flag.Parse()

	items := []any{}
	for _, k := range strings.Split(*kinds, ",") {
		gen, ok := generators[strings.TrimSpace(k)]
		if !ok {
			fmt.Fprintf(os.Stderr, "kubevirt-crds: unknown kind %q (known: %s)\n", k, strings.Join(names(), ", "))
			os.Exit(2)
		}
		crd, err := gen()
		if err != nil {
			fmt.Fprintf(os.Stderr, "kubevirt-crds: %s: %v\n", k, err)
			os.Exit(1)
		}
		crd.APIVersion = "apiextensions.k8s.io/v1"
		crd.Kind = "CustomResourceDefinition"
		items = append(items, crd)
	}
	list := map[string]any{"apiVersion": "v1", "kind": "List", "items": items}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(list); err != nil {
		fmt.Fprintf(os.Stderr, "kubevirt-crds: %v\n", err)
		os.Exit(1)
	}
}
