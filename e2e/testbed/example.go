package testbed

import "fmt"

// ExampleApp is the example application the scenario tests and the demo
// deploy, as a Flux or Argo CD walkthrough has it: under apps/web, a
// namespace, an nginx Deployment of two replicas running image, and its
// Service. Keys are paths in the repository.
func ExampleApp(image string) map[string]string { return ExampleAppIn("web", image) }

// ExampleAppIn is ExampleApp under apps/NS, in namespace ns, for tests that
// deploy several of it side by side.
func ExampleAppIn(ns, image string) map[string]string {
	return map[string]string{
		"apps/" + ns + "/namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: " + ns + "\n",
		"apps/" + ns + "/deployment.yaml": fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx
  namespace: %s
spec:
  replicas: 2
  selector:
    matchLabels: {app: nginx}
  template:
    metadata:
      labels: {app: nginx}
    spec:
      containers:
      - name: nginx
        image: %s
        ports:
        - containerPort: 80
`, ns, image),
		"apps/" + ns + "/service.yaml": fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: nginx
  namespace: %s
spec:
  selector: {app: nginx}
  ports:
  - port: 80
    targetPort: 80
`, ns),
	}
}
