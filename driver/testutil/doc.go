// Package testutil provides test fixtures for Ferry's packages: a real
// registry on the loopback interface, small busybox-based OCI images built
// from the host's static busybox, and helpers to push images or write them
// as OCI image layouts.
package testutil
