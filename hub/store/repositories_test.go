package store

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

func TestRepositories(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	const url = "https://git.example.com/apps.git"
	if _, _, err := s.GetRepositorySealed(ctx, url); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetRepositorySealed before Set: %v, want ErrNotFound", err)
	}
	if _, err := s.SetRepository(ctx, url, AuthBasic, "bot", []byte("sealed-1"), testNow); err != nil {
		t.Fatalf("SetRepository: %v", err)
	}
	if _, err := s.SetRepository(ctx, url, AuthSSH, "git", []byte("sealed-2"), testNow.Add(time.Hour)); err != nil {
		t.Fatalf("SetRepository (replace): %v", err)
	}
	sealed, authType, err := s.GetRepositorySealed(ctx, url)
	if err != nil || !bytes.Equal(sealed, []byte("sealed-2")) || authType != AuthSSH {
		t.Errorf("GetRepositorySealed = %q, %q, %v", sealed, authType, err)
	}
	list, err := s.ListRepositories(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("ListRepositories = %v, %v", list, err)
	}
	if r := list[0]; r.Url != url || r.AuthType != AuthSSH || r.Username != "git" || !r.UpdatedAt.AsTime().Equal(testNow.Add(time.Hour)) {
		t.Errorf("listed = %v", r)
	}

	tests := []struct {
		name, url, authType string
		sealed              []byte
		field               string
	}{
		{"empty url", "", AuthBasic, []byte("x"), "url"},
		{"password in url", "https://bot:hunter2@git.example.com/a.git", AuthBasic, []byte("x"), "url"},
		{"bad auth type", url, "token", []byte("x"), "auth_type"},
		{"no credentials", url, AuthBasic, nil, "credentials"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.SetRepository(ctx, tt.url, tt.authType, "u", tt.sealed, testNow)
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field != tt.field {
				t.Fatalf("err = %v, want a *ValidationError for %s", err, tt.field)
			}
			if bytes.Contains([]byte(err.Error()), []byte("hunter2")) {
				t.Errorf("error %q shows the password", err)
			}
		})
	}

	if err := s.DeleteRepository(ctx, url); err != nil {
		t.Fatalf("DeleteRepository: %v", err)
	}
	if err := s.DeleteRepository(ctx, url); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteRepository: %v, want ErrNotFound", err)
	}
}

func TestSettings(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	if _, err := s.GetSetting(ctx, "ca"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetSetting before set: %v, want ErrNotFound", err)
	}
	got, err := s.InitSetting(ctx, "ca", []byte("first"))
	if err != nil || string(got) != "first" {
		t.Fatalf("InitSetting = %q, %v; want first", got, err)
	}
	got, err = s.InitSetting(ctx, "ca", []byte("second"))
	if err != nil || string(got) != "first" {
		t.Errorf("second InitSetting = %q, %v; want first", got, err)
	}
	if err := s.PutSetting(ctx, "ca", []byte("third")); err != nil {
		t.Fatalf("PutSetting: %v", err)
	}
	if got, err := s.GetSetting(ctx, "ca"); err != nil || string(got) != "third" {
		t.Errorf("GetSetting = %q, %v; want third", got, err)
	}
}
