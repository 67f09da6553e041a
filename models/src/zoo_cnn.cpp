// CNN zoo: AlexNet (torchvision), AlexNet-BN (4-minute paper), VGG-16, ResNet-18..152.
// Tensor names and order follow torchvision's state_dict (parameters only, no buffers).
#include <array>
#include <string>

#include "fuseplan/models/builder.hpp"
#include "zoo_internal.hpp"

namespace fuseplan::zoo_detail {

Model alexnet(const CnnOptions& o) {
  ModelBuilder b("alexnet", {o.channels, o.resolution, o.resolution});
  int x = b.conv("features.0", ModelBuilder::kInput, 64, 11, 4, 2, true);
  x = b.relu("features.1", x);
  x = b.maxpool("features.2", x, 3, 2);
  x = b.conv("features.3", x, 192, 5, 1, 2, true);
  x = b.relu("features.4", x);
  x = b.maxpool("features.5", x, 3, 2);
  x = b.conv("features.6", x, 384, 3, 1, 1, true);
  x = b.relu("features.7", x);
  x = b.conv("features.8", x, 256, 3, 1, 1, true);
  x = b.relu("features.9", x);
  x = b.conv("features.10", x, 256, 3, 1, 1, true);
  x = b.relu("features.11", x);
  x = b.maxpool("features.12", x, 3, 2);
  x = b.adaptive_avgpool("avgpool", x, 6, 6);
  x = b.flatten("flatten", x);
  x = b.dropout("classifier.0", x, 0.5);
  x = b.linear("classifier.1", x, 4096, true);
  x = b.relu("classifier.2", x);
  x = b.dropout("classifier.3", x, 0.5);
  x = b.linear("classifier.4", x, 4096, true);
  x = b.relu("classifier.5", x);
  b.linear("classifier.6", x, o.classes, true);
  return b.finish();
}

// AlexNet-BN as trained at 64K batch in the 4-minute paper (and You et al.): the original
// Krizhevsky widths (96-256-384-384-256, one group, no LRN), 227x227 input, BatchNorm
// after conv1..conv5 (before ReLU), after pool5 ("BN5", the paper's fix for pool5
// variance), and after fc6 and fc7 (before ReLU); no dropout. Layers followed by a BN
// carry no bias (BN's shift replaces it); fc8 keeps its bias.
Model alexnet_bn(const CnnOptions& o) {
  ModelBuilder b("alexnet_bn", {o.channels, o.resolution, o.resolution});
  const std::array<int64_t, 5> width{96, 256, 384, 384, 256};
  const std::array<int, 5> kernel{11, 5, 3, 3, 3}, stride{4, 1, 1, 1, 1}, pad{0, 2, 1, 1, 1};
  int x = ModelBuilder::kInput;
  for (int i = 0; i < 5; ++i) {
    std::string n = std::to_string(i + 1);
    x = b.conv("conv" + n, x, width[i], kernel[i], stride[i], pad[i], false);
    x = b.batchnorm("bn" + n, x);
    x = b.relu("relu" + n, x);
    if (i == 0 || i == 1 || i == 4) x = b.maxpool("pool" + n, x, 3, 2);
  }
  x = b.batchnorm("pool5_bn", x);
  x = b.flatten("flatten", x);
  x = b.linear("fc6", x, 4096, false);
  x = b.batchnorm("fc6_bn", x);
  x = b.relu("relu6", x);
  x = b.linear("fc7", x, 4096, false);
  x = b.batchnorm("fc7_bn", x);
  x = b.relu("relu7", x);
  b.linear("fc8", x, o.classes, true);
  return b.finish();
}

Model vgg16(const CnnOptions& o) {
  ModelBuilder b("vgg16", {o.channels, o.resolution, o.resolution});
  // torchvision cfg "D"; 0 = max pool. Sequential indices count conv, relu and pool.
  const std::array<int, 18> cfg{64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
  int x = ModelBuilder::kInput, idx = 0;
  for (int c : cfg) {
    if (c == 0) {
      x = b.maxpool("features." + std::to_string(idx++), x, 2, 2);
    } else {
      x = b.conv("features." + std::to_string(idx++), x, c, 3, 1, 1, true);
      x = b.relu("features." + std::to_string(idx++), x);
    }
  }
  x = b.adaptive_avgpool("avgpool", x, 7, 7);
  x = b.flatten("flatten", x);
  x = b.linear("classifier.0", x, 4096, true);
  x = b.relu("classifier.1", x);
  x = b.dropout("classifier.2", x, 0.5);
  x = b.linear("classifier.3", x, 4096, true);
  x = b.relu("classifier.4", x);
  x = b.dropout("classifier.5", x, 0.5);
  b.linear("classifier.6", x, o.classes, true);
  return b.finish();
}

namespace {
// torchvision BasicBlock: conv3x3(stride) bn relu conv3x3 bn (+downsample) add relu.
int basic_block(ModelBuilder& b, const std::string& p, int x, int64_t planes, int stride) {
  int identity = x;
  int y = b.conv(p + ".conv1", x, planes, 3, stride, 1, false);
  y = b.batchnorm(p + ".bn1", y);
  y = b.relu(p + ".relu_1", y);
  y = b.conv(p + ".conv2", y, planes, 3, 1, 1, false);
  y = b.batchnorm(p + ".bn2", y);
  if (stride != 1 || b.shape(x)[0] != planes) {
    identity = b.conv(p + ".downsample.0", x, planes, 1, stride, 0, false);
    identity = b.batchnorm(p + ".downsample.1", identity);
  }
  y = b.add(p + ".add", y, identity);
  return b.relu(p + ".relu_2", y);
}

// torchvision Bottleneck (ResNet v1.5: the stride sits on the 3x3 conv).
int bottleneck(ModelBuilder& b, const std::string& p, int x, int64_t planes, int stride) {
  constexpr int64_t kExpansion = 4;
  int identity = x;
  int y = b.conv(p + ".conv1", x, planes, 1, 1, 0, false);
  y = b.batchnorm(p + ".bn1", y);
  y = b.relu(p + ".relu_1", y);
  y = b.conv(p + ".conv2", y, planes, 3, stride, 1, false);
  y = b.batchnorm(p + ".bn2", y);
  y = b.relu(p + ".relu_2", y);
  y = b.conv(p + ".conv3", y, planes * kExpansion, 1, 1, 0, false);
  y = b.batchnorm(p + ".bn3", y);
  if (stride != 1 || b.shape(x)[0] != planes * kExpansion) {
    identity = b.conv(p + ".downsample.0", x, planes * kExpansion, 1, stride, 0, false);
    identity = b.batchnorm(p + ".downsample.1", identity);
  }
  y = b.add(p + ".add", y, identity);
  return b.relu(p + ".relu_3", y);
}
}  // namespace

Model resnet(const std::string& name, const std::array<int, 4>& blocks, bool use_bottleneck, const CnnOptions& o) {
  ModelBuilder b(name, {o.channels, o.resolution, o.resolution});
  int x = b.conv("conv1", ModelBuilder::kInput, 64, 7, 2, 3, false);
  x = b.batchnorm("bn1", x);
  x = b.relu("relu", x);
  x = b.maxpool("maxpool", x, 3, 2, 1);
  const std::array<int64_t, 4> planes{64, 128, 256, 512};
  for (int stage = 0; stage < 4; ++stage) {
    for (int i = 0; i < blocks[stage]; ++i) {
      std::string p = "layer" + std::to_string(stage + 1) + "." + std::to_string(i);
      int stride = (stage > 0 && i == 0) ? 2 : 1;
      x = use_bottleneck ? bottleneck(b, p, x, planes[stage], stride) : basic_block(b, p, x, planes[stage], stride);
    }
  }
  x = b.adaptive_avgpool("avgpool", x, 1, 1);
  x = b.flatten("flatten", x);
  b.linear("fc", x, o.classes, true);
  return b.finish();
}

}  // namespace fuseplan::zoo_detail
