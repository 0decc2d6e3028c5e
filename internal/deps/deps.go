package deps

import (
	_ "github.com/apache/pulsar-client-go/pulsar"
	_ "github.com/caddyserver/certmagic"
	_ "github.com/coder/websocket"
	_ "github.com/coreos/go-oidc/v3/oidc"
	_ "github.com/fsnotify/fsnotify"
	_ "github.com/go-jose/go-jose/v4"
	_ "github.com/oauth2-proxy/mockoidc"
	_ "github.com/oklog/ulid/v2"
	_ "github.com/open-policy-agent/opa/v1/rego"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "go.yaml.in/yaml/v3"
	_ "golang.org/x/oauth2"
	_ "golang.org/x/sync/errgroup"
)
