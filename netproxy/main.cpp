// Runs in: netproxy. Enters the sandbox, then reads the first byte.
#include "ipc/child-link.h"
#include "ipc/display.capnp.h"
#include "netproxy/sandbox-profile.h"

int main(int argc, char** argv) {
  using namespace spicebox;
  using Link = ipc::ChildLink<ipc::display::BrokerToNetproxy, ipc::display::NetproxyToBroker,
                              ipc::display::PROTOCOL_VERSION>;
  ipc::runChild<Link>(argc, argv, "netproxy", netproxy::sandboxProfile);
}
