// Command workload is the process the test cluster runs inside pod network
// namespaces (a TEST TOOL: there are no container images). Its answers name
// the server and the client address it saw, so a test can tell which
// backend a Service picked and whether the source was NATed.
//
//	workload serve --name N --port P [--udp-port U]   TCP+UDP on P (and UDP on U); "ready" once listening; until SIGTERM
//	workload get --addr IP:PORT [--count K] [--timeout 2s] [--udp]   K requests, one server name per line
//	workload hold --addr IP:PORT [--interval 200ms] [--timeout 2s]   one TCP connection echoing every interval
//
// get and hold exit 1 with the error on the first failure; SIGTERM ends
// serve and hold with status 0.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks a command line error (exit status 2).
var errUsage = errors.New("usage")

// run executes one subcommand until it is done or ctx ends, and returns
// the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := map[string]func(context.Context, *flag.FlagSet, []string, io.Writer) error{
		"serve": serve, "get": get, "hold": hold,
	}
	if len(args) == 0 || cmds[args[0]] == nil {
		fmt.Fprintln(stderr, "usage: workload serve|get|hold [flags]")
		return 2
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	err := cmds[args[0]](ctx, fs, args[1:], stdout)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp):
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "workload %s: %v\n", args[0], err)
		}
		return 2
	default:
		fmt.Fprintf(stderr, "workload %s: %v\n", args[0], err)
		return 1
	}
}

func serve(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	name := fs.String("name", "", "server name put in every answer (required)")
	port := fs.Int("port", 0, "TCP and UDP port (required)")
	udpPort := fs.Int("udp-port", 0, "an extra UDP port")
	bind := fs.String("bind", "0.0.0.0", "address to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" || *port <= 0 {
		return fmt.Errorf("%w: --name and --port are required", errUsage)
	}
	hostPort := func(p int) string { return net.JoinHostPort(*bind, strconv.Itoa(p)) }
	ln, err := net.Listen("tcp4", hostPort(*port))
	if err != nil {
		return err
	}
	defer ln.Close()
	udpPorts := []int{*port}
	if *udpPort > 0 {
		udpPorts = append(udpPorts, *udpPort)
	}
	var pcs []net.PacketConn
	for _, p := range udpPorts {
		pc, err := net.ListenPacket("udp4", hostPort(p))
		if err != nil {
			return err
		}
		defer pc.Close()
		pcs = append(pcs, pc)
	}
	// The harness starts sending once it reads this line.
	fmt.Fprintln(stdout, "ready")

	var wg sync.WaitGroup
	wg.Go(func() { acceptLoop(ctx, ln, *name, &wg) })
	for _, pc := range pcs {
		wg.Go(func() { answerLoop(pc, *name) })
	}
	<-ctx.Done()
	ln.Close()
	for _, pc := range pcs {
		pc.Close()
	}
	wg.Wait()
	return nil
}

// acceptLoop greets each TCP client with "<name> <its ip>" and echoes its
// lines until it closes or ctx ends.
func acceptLoop(ctx context.Context, ln net.Listener, name string, wg *sync.WaitGroup) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Go(func() {
			defer c.Close()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			if _, err := fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).IP); err != nil {
				return
			}
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				if _, err := fmt.Fprintf(c, "%s\n", sc.Text()); err != nil {
					return
				}
			}
		})
	}
}

// answerLoop answers each datagram with "<name> <sender ip>".
func answerLoop(pc net.PacketConn, name string) {
	buf := make([]byte, 64*1024)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo(fmt.Appendf(nil, "%s %s", name, from.(*net.UDPAddr).IP), from)
	}
}

func get(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	addr := fs.String("addr", "", "IP:PORT to ask (required)")
	count := fs.Int("count", 1, "number of requests, each on a new connection or socket")
	timeout := fs.Duration("timeout", 2*time.Second, "limit of each request")
	udp := fs.Bool("udp", false, "ask over UDP instead of TCP")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *count < 1 {
		return fmt.Errorf("%w: --addr is required and --count must be positive", errUsage)
	}
	for i := range *count {
		name, err := request(ctx, *addr, *udp, *timeout)
		if err != nil {
			return fmt.Errorf("request %d of %d to %s: %w", i+1, *count, *addr, err)
		}
		fmt.Fprintln(stdout, name)
	}
	return nil
}

// request asks addr once and returns the server name of the answer.
func request(ctx context.Context, addr string, udp bool, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	network := "tcp4"
	if udp {
		network = "udp4"
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	var answer string
	if udp {
		if _, err := c.Write([]byte("ping")); err != nil {
			return "", err
		}
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		if err != nil {
			return "", err
		}
		answer = string(buf[:n])
	} else if answer, err = bufio.NewReader(c).ReadString('\n'); err != nil {
		return "", fmt.Errorf("greeting: %w", err)
	}
	return serverName(answer)
}

// serverName is the first word of an answer "<name> <client ip>".
func serverName(answer string) (string, error) {
	f := strings.Fields(answer)
	if len(f) != 2 {
		return "", fmt.Errorf("malformed answer %q", answer)
	}
	return f[0], nil
}

func hold(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	addr := fs.String("addr", "", "IP:PORT to connect to (required)")
	interval := fs.Duration("interval", 200*time.Millisecond, "time between echoes")
	timeout := fs.Duration("timeout", 2*time.Second, "limit of the connect and of each echo")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *interval <= 0 {
		return fmt.Errorf("%w: --addr is required and --interval must be positive", errUsage)
	}
	dctx, cancel := context.WithTimeout(ctx, *timeout)
	c, err := (&net.Dialer{}).DialContext(dctx, "tcp4", *addr)
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	rd := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(*timeout))
	greeting, err := rd.ReadString('\n')
	if err != nil {
		return fmt.Errorf("greeting from %s: %w", *addr, err)
	}
	name, err := serverName(greeting)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, name)

	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for seq := 1; ; seq++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		// A deadline rather than ctx: SIGTERM during an echo must not be
		// mistaken for a broken connection, so it is only checked between.
		_ = c.SetDeadline(time.Now().Add(*timeout))
		msg := fmt.Sprintf("%s %d", name, seq)
		if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
			return fmt.Errorf("echo %d on %s: %w", seq, *addr, err)
		}
		got, err := rd.ReadString('\n')
		if err != nil {
			return fmt.Errorf("echo %d on %s: %w", seq, *addr, err)
		}
		if got = strings.TrimSuffix(got, "\n"); got != msg {
			return fmt.Errorf("echo %d on %s: sent %q, got %q", seq, *addr, msg, got)
		}
	}
}
