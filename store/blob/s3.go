package blob

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Config configures S3-compatible object storage.
type S3Config struct {
	// Endpoint is the server's URL, e.g. https://s3.eu-west-1.amazonaws.com
	// or http://127.0.0.1:7070 (http means no TLS).
	Endpoint  string
	Bucket    string
	Region    string
	PathStyle bool // bucket in the path rather than the host name
	AccessKey string
	SecretKey string
}

// S3 is a Store on S3-compatible object storage; its download links are
// S3 presigned GETs.
type S3 struct {
	c      *minio.Client
	bucket string
}

// NewS3 connects to the storage (no request is made).
func NewS3(cfg S3Config) (*S3, error) {
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("s3 endpoint %q must be an http(s) URL", cfg.Endpoint)
	}
	if cfg.Bucket == "" {
		return nil, fmt.Errorf("s3 bucket is required")
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	c, err := minio.New(u.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure:       u.Scheme == "https",
		Region:       cfg.Region,
		BucketLookup: lookup,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client: %w", err)
	}
	return &S3{c: c, bucket: cfg.Bucket}, nil
}

// Put uploads the blob with its content type.
func (s *S3) Put(ctx context.Context, key string, data []byte, contentType string) error {
	if _, err := s.c.PutObject(ctx, s.bucket, key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: contentType}); err != nil {
		return fmt.Errorf("s3 put: %w", err)
	}
	return nil
}

// Delete removes the blob.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := s.c.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("s3 delete: %w", err)
	}
	return nil
}

// PresignGet is a presigned GET of the blob, valid ttl, that downloads it as
// an attachment named filename.
func (s *S3) PresignGet(ctx context.Context, key, filename string, ttl time.Duration) (string, error) {
	q := url.Values{}
	q.Set("response-content-disposition", mime.FormatMediaType("attachment", map[string]string{"filename": filename}))
	u, err := s.c.PresignedGetObject(ctx, s.bucket, key, ttl, q)
	if err != nil {
		return "", fmt.Errorf("s3 presign: %w", err)
	}
	return u.String(), nil
}

// EnsureBucket creates the bucket if it does not exist (tests, first start).
func (s *S3) EnsureBucket(ctx context.Context, region string) error {
	ok, err := s.c.BucketExists(ctx, s.bucket)
	if err != nil {
		return fmt.Errorf("s3 bucket: %w", err)
	}
	if ok {
		return nil
	}
	if err := s.c.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: region}); err != nil && !strings.Contains(err.Error(), "already") {
		return fmt.Errorf("s3 make bucket: %w", err)
	}
	return nil
}

// Get reads the blob.
func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if _, err := s.Stat(ctx, key); err != nil {
		return nil, err
	}
	o, err := s.c.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("s3 get: %w", err)
	}
	return o, nil
}

// Stat tells the blob's size and content type.
func (s *S3) Stat(ctx context.Context, key string) (Info, error) {
	st, err := s.c.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		if minio.ToErrorResponse(err).StatusCode == http.StatusNotFound {
			return Info{}, ErrNotFound
		}
		return Info{}, fmt.Errorf("s3 stat: %w", err)
	}
	return Info{Size: st.Size, ContentType: st.ContentType}, nil
}

// PresignPost is an S3 POST-policy form, valid ttl, that uploads exactly
// size bytes of contentType as the blob key and nothing else: the policy
// pins the bucket, the key, the content type and the length (S3 refuses
// any other with 400 EntityTooLarge or EntityTooSmall), so a leaked form
// can neither write elsewhere nor store more than was prepared.
func (s *S3) PresignPost(ctx context.Context, key string, size int64, contentType string, ttl time.Duration) (string, map[string]string, error) {
	p := minio.NewPostPolicy()
	for _, err := range []error{
		p.SetBucket(s.bucket), p.SetKey(key), p.SetExpires(time.Now().Add(ttl).UTC()),
		p.SetContentType(contentType), p.SetContentLengthRange(size, size),
	} {
		if err != nil {
			return "", nil, fmt.Errorf("s3 post policy: %w", err)
		}
	}
	u, fields, err := s.c.PresignedPostPolicy(ctx, p)
	if err != nil {
		return "", nil, fmt.Errorf("s3 presign post: %w", err)
	}
	return u.String(), fields, nil
}
