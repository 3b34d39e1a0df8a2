// Command operator-manifests prints what KubeVirt's release file
// kubevirt-operator.yaml installs (namespace, the KubeVirt CRD, the priority
// class, virt-operator's RBAC and its Deployment) as one JSON v1 List, built
// with virt-operator's own Go packages for this KubeVirt version, so the test
// cluster installs KubeVirt the way a cluster administrator does: apply this,
// then create a KubeVirt CR and let virt-operator deploy the rest.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/rbac"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "operator-manifests: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	namespace := flag.String("namespace", "kubevirt", "namespace KubeVirt is installed in")
	registry := flag.String("image-registry", "", "registry part of every KubeVirt image name, e.g. localhost/kvs-kubevirt (required)")
	tag := flag.String("tag", "", "tag of every KubeVirt image (required)")
	pullPolicy := flag.String("pull-policy", "IfNotPresent", "imagePullPolicy of virt-operator and, through it, of every component")
	verbosity := flag.String("verbosity", "2", "virt-operator's -v")
	replicas := flag.Int("replicas", 2, "virt-operator replicas (the release file has 2)")
	flag.Parse()
	if *registry == "" || *tag == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: operator-manifests --image-registry REGISTRY --tag TAG [--namespace NS] [--replicas N]")
		os.Exit(2)
	}

	items := []any{}
	items = append(items, &corev1.Namespace{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{
			Name: *namespace,
			Labels: map[string]string{
				"kubevirt.io":                        "",
				"pod-security.kubernetes.io/enforce": "privileged",
			},
		},
	})
	crd, err := components.NewKubeVirtCrd()
	if err != nil {
		fail("KubeVirt CRD: %v", err)
	}
	crd.APIVersion = "apiextensions.k8s.io/v1"
	crd.Kind = "CustomResourceDefinition"
	items = append(items, crd)
	items = append(items, components.NewKubeVirtPriorityClassCR())
	// The release file's own ClusterRole for managing KubeVirt CRs (it
	// aggregates to "admin"); the rest of the operator's RBAC is generated.
	items = append(items, &rbacv1.ClusterRole{
		TypeMeta: metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
		ObjectMeta: metav1.ObjectMeta{
			Name: "kubevirt.io:operator",
			Labels: map[string]string{
				"operator.kubevirt.io":                         "",
				"rbac.authorization.k8s.io/aggregate-to-admin": "true",
			},
		},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{"kubevirt.io"},
			Resources: []string{"kubevirts"},
			Verbs:     []string{"get", "delete", "create", "update", "patch", "list", "watch", "deletecollection"},
		}},
	})
	items = append(items, rbac.GetAllOperator(*namespace)...)

	// Empty per-component images: virt-operator derives every image from its
	// own name, <registry>/virt-<component>:<tag>.
	dep := components.NewOperatorDeployment(*namespace, *registry, "", *tag, *verbosity, *tag, "",
		"", "", "", "", "", "", "", "", "", "", "", "", "", corev1.PullPolicy(*pullPolicy))
	n := int32(*replicas)
	dep.Spec.Replicas = &n
	items = append(items, dep)

	list := map[string]any{"apiVersion": "v1", "kind": "List", "items": items}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(list); err != nil {
		fail("%v", err)
	}
}
