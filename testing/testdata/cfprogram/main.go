// Command cfprogram is written for github.com/cloudflare/tableflip v1.2.3
// and its testing stub, as a program using them would be; the testing
// package's test builds and runs it with only its import paths changed.
// (In testdata, so that nothing here builds it as it is.)
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/cloudflare/tableflip"
	"github.com/cloudflare/tableflip/testing"
)

// upgrader is what the program needs of an upgrader, which the real one
// and the stub both have. (Their AddListener and AddConn differ: the
// stub's take a net.Listener and a net.Conn.)
type upgrader interface {
	Listen(network, addr string) (net.Listener, error)
	Listener(network, addr string) (net.Listener, error)
	Conn(network, addr string) (net.Conn, error)
	File(name string) (*os.File, error)
	AddFile(name string, f *os.File) error
	Ready() error
	Exit() <-chan struct{}
	Stop()
	Upgrade() error
	HasParent() bool
	WaitForParent(ctx context.Context) error
}

var (
	_ upgrader = (*tableflip.Upgrader)(nil)
	_ upgrader = (*testing.Upgrader)(nil)
)

func main() {
	if err := run(); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
}

func run() error {
	var upg upgrader
	stub, err := testing.New()
	if err != nil {
		return err
	}
	upg = stub
	defer upg.Stop()

	ln, err := upg.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	if err := stub.AddListener("tcp", "again", ln); err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "hello")
			c.Close()
		}
	}()
	if err := upg.Ready(); err != nil {
		return err
	}

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil {
		return err
	}
	fmt.Print("served: ", line)

	inherited, _ := upg.Listener("tcp", "127.0.0.1:0")
	conn, _ := upg.Conn("tcp", "x")
	file, _ := upg.File("x")
	fmt.Println("inherited:", inherited == nil && conn == nil && file == nil, upg.HasParent())
	if err := stub.AddConn("tcp", "x", c); err != nil {
		return err
	}
	if err := upg.AddFile("x", os.Stdin); err != nil {
		return err
	}
	fmt.Println("wait for parent:", upg.WaitForParent(context.Background()))
	err = upg.Upgrade()
	fmt.Println("upgrade not supported:", errors.Is(err, tableflip.ErrNotSupported))
	select {
	case <-upg.Exit():
		return errors.New("exit channel closed without Stop")
	default:
	}
	return nil
}
