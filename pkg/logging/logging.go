// Package logging builds the zap logger of every nsx-ujo daemon from ncp.ini
// [DEFAULT], so all components log with the same format and fields.
package logging

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/term"
	"k8s.io/klog/v2"

	"github.com/nsx-ujo/nsx-ujo/pkg/config"
)

// Options override what New would detect; tests use them.
type Options struct {
	Stderr       io.Writer // default os.Stderr
	ForceJSON    bool      // JSON even on a terminal
	ForceConsole bool      // console format even when not on a terminal
}

// New returns a logger at debug level when [DEFAULT] debug is set, else info,
// with the field component on every entry. It writes to stderr: human
// readable on a terminal, JSON otherwise (containers, collected by the node's
// log agent). When log_dir is set it also appends JSON to
// log_dir/log_file, log_file defaulting to <component>.log.
func New(d config.Default, component string, opts Options) (*zap.Logger, error) {
	if component == "" {
		return nil, errors.New("logging: empty component name")
	}
	if opts.ForceJSON && opts.ForceConsole {
		return nil, errors.New("logging: ForceJSON and ForceConsole are exclusive")
	}
	stderr := opts.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	level := zapcore.InfoLevel
	if d.Debug {
		level = zapcore.DebugLevel
	}

	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	json := zapcore.NewJSONEncoder(enc)
	console := opts.ForceConsole || (!opts.ForceJSON && isTerminal(stderr))
	stderrEnc := json
	if console {
		enc.EncodeLevel = zapcore.CapitalLevelEncoder
		stderrEnc = zapcore.NewConsoleEncoder(enc)
	}
	out := zapcore.Lock(zapcore.AddSync(stderr))
	cores := []zapcore.Core{zapcore.NewCore(stderrEnc, out, level)}

	if d.LogDir != "" {
		name := d.LogFile
		if name == "" {
			name = component + ".log"
		}
		if err := os.MkdirAll(d.LogDir, 0o755); err != nil {
			return nil, fmt.Errorf("logging: ncp.ini [DEFAULT] log_dir: %w", err)
		}
		// Left open for the life of the process, like stderr.
		f, err := os.OpenFile(filepath.Join(d.LogDir, name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("logging: ncp.ini [DEFAULT] log_file: %w", err)
		}
		cores = append(cores, zapcore.NewCore(json, zapcore.Lock(f), level))
	}

	return zap.New(zapcore.NewTee(cores...), zap.AddCaller(), zap.ErrorOutput(out)).
		With(zap.String("component", component)), nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// RouteKlog sends what client-go logs through klog (a watch cut, a list
// that failed and why, an API server answering errors) to log, named
// client-go, so that an operator finds the API server's failures in the
// daemon's JSON log with its other entries rather than as klog text.
// klog holds one process-wide logger: the last call wins.
func RouteKlog(log *zap.Logger) {
	klog.SetLogger(zapr.NewLogger(log.Named("client-go")))
}
