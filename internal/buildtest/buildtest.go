// Package buildtest holds the tests of the build itself (its test file):
// `make build` makes hninit, mkimage and imaged static, so they run on a
// minimal or non-Debian image without its C library.
package buildtest
