package e2e

import (
	"errors"
	"os/exec"

	"github.com/containernetworking/cni/pkg/types"
)

func asCNIError(err error, target **types.Error) bool { return errors.As(err, target) }

func runOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
