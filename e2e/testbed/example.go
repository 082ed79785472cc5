package testbed

import "fmt"

// ExampleApp is the example application the scenario tests and the demo
// deploy, as a Flux or Argo CD walkthrough has it: under apps/web, a
// namespace, an nginx Deployment of two replicas running image, and its
// Service. Keys are paths in the repository.
func ExampleApp(image string) map[string]string {
	return map[string]string{
		"apps/web/namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n",
		"apps/web/deployment.yaml": fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx
  namespace: web
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
`, image),
		"apps/web/service.yaml": `apiVersion: v1
kind: Service
metadata:
  name: nginx
  namespace: web
spec:
  selector: {app: nginx}
  ports:
  - port: 80
    targetPort: 80
`,
	}
}
