// Tests of the command line: the options accepted and ignored.

package main

import (
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestIgnoredOptions passes each of ignoredOptions: it is accepted and
// changes nothing in the parsed options.
func TestIgnoredOptions(t *testing.T) {
	want, err := parseWith()
	require.NoError(t, err)
	flags := newFlagSet(&options{}, io.Discard)
	for opt := range ignoredOptions {
		var args []string
		if key, ok := strings.CutPrefix(opt, "-o "); ok {
			args = []string{"-o", key}
		} else {
			name := strings.TrimPrefix(opt, "--")
			fl := flags.Lookup(name)
			require.NotNil(t, fl, "%s is not an option", opt)
			require.Equal(t, "bool", fl.Value.Type(), opt)
			args = []string{opt}
			if fl.Shorthand != "" {
				args = append(args, "-"+fl.Shorthand)
			}
		}
		got, err := parseWith(args...)
		require.NoError(t, err, opt)
		got.compat = nil // the text of -o
		require.Equal(t, want, got, opt)
	}
}
