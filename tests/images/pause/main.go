// Command pause is the pod sandbox's process in the test images (what
// registry.k8s.io/pause is: build/pause/linux/pause.c): as PID 1 of the
// pod it reaps zombies and exits on SIGINT/SIGTERM. Written in Go so the
// image builds from this repository without a C toolchain in the image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if os.Getpid() != 1 {
		os.Stderr.WriteString("Warning: pause should be the first process\n")
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			// 0 for SIGINT/SIGTERM, as the reference pause does.
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
