package artifact

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/Masterminds/semver/v3"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/errcode"

	"github.com/drover-dev/drover/internal/gitremote"
	"github.com/drover-dev/drover/internal/retry"
)

// Media types of the two OCI artifacts Drover deploys.
const (
	// A Helm chart pushed with `helm push`.
	HelmConfigMediaType = "application/vnd.cncf.helm.config.v1+json"
	HelmLayerMediaType  = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
	// Manifests or a Kustomize directory pushed with `flux push artifact`.
	FluxConfigMediaType = "application/vnd.cncf.flux.config.v1+json"
	FluxLayerMediaType  = "application/vnd.cncf.flux.content.v1.tar+gzip"
)

// MaxTags bounds how many tags of one OCI repository a range is resolved
// over.
const MaxTags = 100000

// OCIRef is an oci:// source URL split into registry and repository.
type OCIRef struct {
	// Host is the registry, HOST or HOST:PORT.
	Host string
	// Repository is the path inside it.
	Repository string
}

func (r OCIRef) String() string { return "oci://" + r.Host + "/" + r.Repository }

// ParseOCIURL parses "oci://HOST[:PORT]/PATH" as the OCI distribution spec
// names repositories (lower-case path components). It is the one
// definition of an OCI source URL. Errors wrap ErrInvalid.
func ParseOCIURL(raw string) (OCIRef, error) {
	red := gitremote.RedactURL(raw)
	rest, ok := strings.CutPrefix(raw, "oci://")
	if !ok {
		return OCIRef{}, invalidf("%q is not an oci:// URL", red)
	}
	if strings.ContainsAny(rest, "@?#") {
		return OCIRef{}, invalidf("%q: an OCI source URL is oci://HOST[:PORT]/PATH, with no credentials, tag, digest or query (the version goes in version)", red)
	}
	ref, err := registry.ParseReference(rest)
	if err != nil || ref.Reference != "" || ref.Repository == "" {
		return OCIRef{}, invalidf("%q is not oci://HOST[:PORT]/PATH with a lower-case repository path", red)
	}
	return OCIRef{Host: ref.Registry, Repository: ref.Repository}, nil
}

// OCIRepository is one OCI repository opened with its source's access. It
// lists the repository's tags at most once, however many ranges it
// resolves, so the hub lists each repository once per poll.
type OCIRepository struct {
	ref  OCIRef
	repo *remote.Repository
	tr   *http.Transport
	tags []string // listed on first need
}

// OpenOCI prepares access to the repository rawURL names. With
// acc.Insecure it speaks plain HTTP, and then refuses credentials. Close it
// when done.
func OpenOCI(rawURL string, acc Access) (*OCIRepository, error) {
	ref, err := ParseOCIURL(rawURL)
	if err != nil {
		return nil, err
	}
	if acc.Insecure && acc.hasCredentials() {
		return nil, errPlainCredentials(ref.String())
	}
	client, tr, err := acc.httpClient()
	if err != nil {
		return nil, err
	}
	repo, err := remote.NewRepository(ref.Host + "/" + ref.Repository)
	if err != nil {
		return nil, invalidf("%s: %v", ref, err)
	}
	repo.PlainHTTP = acc.Insecure
	repo.SkipReferrersGC = true
	repo.MaxMetadataBytes = MaxManifestBytes
	ac := &auth.Client{Client: client, Cache: auth.NewCache()}
	if acc.hasCredentials() {
		ac.Credential = auth.StaticCredential(ref.Host, auth.Credential{Username: acc.Username, Password: acc.Password})
	}
	repo.Client = ac
	return &OCIRepository{ref: ref, repo: repo, tr: tr}, nil
}

// Close releases idle connections.
func (o *OCIRepository) Close() { o.tr.CloseIdleConnections() }

// Resolve pins constraint to a tag and its manifest digest: "" is the tag
// "latest"; a tag is itself; a semver range ("1.2.x", "^1", ">=1 <2") is
// the highest tag that parses as a version and satisfies it (Helm writes
// a version's "+" as "_" in tags, and it is read back so). No tag
// satisfying a range is a *NoVersionError.
func (o *OCIRepository) Resolve(ctx context.Context, constraint string) (Revision, error) {
	tag := constraint
	switch {
	case constraint == "":
		tag = "latest"
	case isRange(constraint):
		tags, err := o.listTags(ctx)
		if err != nil {
			return Revision{}, err
		}
		versions := make([]string, len(tags))
		for i, t := range tags {
			versions[i] = strings.ReplaceAll(t, "_", "+")
		}
		chosen, highest, err := pick(versions, constraint)
		if err != nil {
			return Revision{}, err
		}
		if chosen == "" {
			return Revision{}, retry.Permanent(&NoVersionError{Name: o.ref.String(), URL: o.ref.String(), Constraint: constraint, Highest: highest})
		}
		tag = strings.ReplaceAll(chosen, "+", "_")
	case !IsTag(constraint):
		// An exact version with build metadata, as Helm tags it.
		tag = strings.ReplaceAll(constraint, "+", "_")
	}
	if !IsTag(tag) {
		return Revision{}, invalidf("%s: version %q is neither a tag nor a semantic version range", o.ref, constraint)
	}
	desc, err := o.repo.Resolve(ctx, tag)
	if err != nil {
		return Revision{}, o.wrap("resolve tag "+tag, err)
	}
	return newRevision(tag, desc.Digest.String())
}

// isRange reports whether a version is a range rather than one version or
// tag (Helm's repo.isVersionRange), and parses as one.
func isRange(v string) bool {
	r := strings.ContainsAny(v, "^~<>=!*") || strings.Contains(v, "||") || strings.Contains(v, " - ")
	if !r {
		core := v
		if i := strings.IndexAny(v, "-+"); i >= 0 {
			core = v[:i]
		}
		r = strings.ContainsAny(core, "xX")
	}
	if !r {
		return false
	}
	_, err := semver.NewConstraint(v)
	return err == nil
}

func (o *OCIRepository) listTags(ctx context.Context) ([]string, error) {
	if o.tags != nil {
		return o.tags, nil
	}
	var tags []string
	err := o.repo.Tags(ctx, "", func(page []string) error {
		tags = append(tags, page...)
		if len(tags) > MaxTags {
			return fmt.Errorf("%w: more than %d tags", ErrTooLarge, MaxTags)
		}
		return nil
	})
	if err != nil {
		return nil, o.wrap("list tags", err)
	}
	o.tags = tags
	return tags, nil
}

// Pulled is an OCI artifact's content layer, verified against its digest.
type Pulled struct {
	// Helm is true for a Helm chart, whose layer is a chart archive (one
	// top-level directory); false for a Flux artifact, whose layer holds
	// the files at its root.
	Helm  bool
	Layer []byte
}

// Pull fetches the manifest rev.Digest names, checks that its SHA-256 is
// rev.Digest, and fetches and verifies its content layer. A manifest or
// layer whose bytes do not match is a *DigestMismatchError; an artifact
// that is neither a Helm chart nor a Flux artifact is ErrMediaType.
func (o *OCIRepository) Pull(ctx context.Context, rev Revision) (*Pulled, error) {
	if err := checkDigest(rev.Digest); err != nil {
		return nil, err
	}
	_, rc, err := o.repo.Manifests().FetchReference(ctx, rev.Digest)
	if err != nil {
		return nil, o.wrap("fetch manifest "+rev.Digest, err)
	}
	body, err := io.ReadAll(io.LimitReader(rc, MaxManifestBytes+1))
	rc.Close()
	if err != nil {
		return nil, o.wrap("fetch manifest "+rev.Digest, err)
	}
	if len(body) > MaxManifestBytes {
		return nil, retry.Permanent(fmt.Errorf("manifest %s of %s: %w: more than %d MiB", rev.Digest, o.ref, ErrTooLarge, MaxManifestBytes>>20))
	}
	// oras checks what the registry says the digest is; the bytes are
	// checked here, against the pinned digest.
	if got := digestOf(body); got != rev.Digest {
		return nil, retry.Transient(&DigestMismatchError{What: "manifest", URL: o.ref.String(), Got: got, Want: rev.Digest})
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, invalidf("manifest %s of %s is not an OCI image manifest: %v", rev.Digest, o.ref, err)
	}
	var helm bool
	var layerType string
	switch m.Config.MediaType {
	case HelmConfigMediaType:
		helm, layerType = true, HelmLayerMediaType
	case FluxConfigMediaType:
		layerType = FluxLayerMediaType
	default:
		mt := m.Config.MediaType
		if mt == "" {
			mt = m.MediaType
		}
		return nil, retry.Permanent(fmt.Errorf("%w: %s at %s has config media type %q: Drover deploys Helm charts (%s) and Flux artifacts (%s)", ErrMediaType, o.ref, rev.Digest, mt, HelmConfigMediaType, FluxConfigMediaType))
	}
	var layer *ocispec.Descriptor
	for i, l := range m.Layers {
		if l.MediaType == layerType {
			if layer != nil {
				return nil, invalidf("%s at %s has more than one %s layer", o.ref, rev.Digest, layerType)
			}
			layer = &m.Layers[i]
		}
	}
	if layer == nil {
		return nil, retry.Permanent(fmt.Errorf("%w: %s at %s has no layer of media type %s", ErrMediaType, o.ref, rev.Digest, layerType))
	}
	if layer.Size < 0 || layer.Size > MaxArchiveBytes {
		return nil, retry.Permanent(fmt.Errorf("layer %s of %s: %w: %d bytes, more than %d MiB", layer.Digest, o.ref, ErrTooLarge, layer.Size, MaxArchiveBytes>>20))
	}
	if err := checkDigest(layer.Digest.String()); err != nil {
		return nil, err
	}
	lrc, err := o.repo.Blobs().Fetch(ctx, *layer)
	if err != nil {
		return nil, o.wrap("fetch layer "+layer.Digest.String(), err)
	}
	data, err := io.ReadAll(io.LimitReader(lrc, layer.Size+1))
	lrc.Close()
	if err != nil {
		return nil, o.wrap("fetch layer "+layer.Digest.String(), err)
	}
	sum := sha256.Sum256(data)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != layer.Digest.String() || int64(len(data)) != layer.Size {
		return nil, retry.Transient(&DigestMismatchError{What: "layer", URL: o.ref.String(), Got: got, Want: layer.Digest.String()})
	}
	return &Pulled{Helm: helm, Layer: data}, nil
}

// wrap classifies an error of oras-go. Its errors may name the registry's
// URLs but never the credentials, which travel in headers.
func (o *OCIRepository) wrap(what string, err error) error {
	var resp *errcode.ErrorResponse
	var uerr *url.Error
	switch {
	case errors.As(err, &resp):
		return statusError(what, o.ref.String(), resp.StatusCode)
	case errors.Is(err, auth.ErrBasicCredentialNotFound):
		// The registry wants credentials and none are stored.
		return retry.Permanent(fmt.Errorf("%s of %s: %w: the registry wants credentials; store them with droverctl repo set", what, o.ref, ErrAuth))
	case errors.Is(err, errdef.ErrNotFound):
		return retry.Permanent(fmt.Errorf("%s of %s: %w", what, o.ref, ErrNotFound))
	case errors.As(err, &uerr):
		return transportError(what, o.ref.String(), err)
	case errors.Is(err, ErrTooLarge), errors.Is(err, errdef.ErrSizeExceedsLimit):
		return retry.Permanent(fmt.Errorf("%s of %s: %w: %v", what, o.ref, ErrTooLarge, err))
	}
	return fmt.Errorf("%s of %s: %w", what, o.ref, markNetwork(err))
}
