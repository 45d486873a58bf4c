// Runs in: renderer. Enters the sandbox, then reads the first byte.
#include "ipc/child-link.h"
#include "ipc/render.capnp.h"
#include "renderer/sandbox-profile.h"

int main(int argc, char** argv) {
  using namespace spicebox;
  using Link = ipc::ChildLink<ipc::render::BrokerToRenderer, ipc::render::RendererToBroker,
                              ipc::render::PROTOCOL_VERSION>;
  ipc::runChild<Link>(argc, argv, "renderer", renderer::sandboxProfile);
}
